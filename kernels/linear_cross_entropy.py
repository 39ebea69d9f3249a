"""Fused linear cross-entropy: the generator's ``lm_head`` matmul + next-token CE, chunked over tokens.

Contract (same as transformers' ``ForCausalLMLoss`` / ``fixed_cross_entropy``), for hidden states
``H`` [N, d], ``lm_head`` weight ``W`` [V, d], optional bias ``b`` [V] and labels ``y`` [N] that are
**already shifted** (``y[n]`` is the token that position ``n`` predicts; ``ignore_index`` = skip)::

    z_n   = H[n] @ W.T + b                     in the input dtype (as the lm_head computes it), then fp32
    l_n   = logsumexp(z_n) - z_n[y_n]          fp32 (fp64 for fp64 inputs); 0 where y_n == ignore_index
    loss  = sum_n l_n / D,   D = num_items_in_batch if given, else the number of non-ignored labels

``num_items_in_batch`` (tensor or int) is the gradient-accumulation denominator the transformers
``Trainer`` passes: the loss is then a sum divided by it, exactly like ``reduction="sum"`` followed by
``/ num_items_in_batch`` in ``fixed_cross_entropy``. Without it, the loss is the mean over non-ignored
labels, like ``reduction="mean"`` — except that **with zero non-ignored labels the loss is 0.0**
(D is clamped to 1; the result stays connected to the graph and every gradient is exactly 0),
where ``F.cross_entropy(reduction="mean")`` would return NaN. Leading dims are allowed: ``hidden``
[..., d] with ``labels`` [...] is flattened to [N, d] / [N].

Layers (one way: the Triton module knows nothing of this one):

* :func:`linear_cross_entropy_reference` — eager: materialises the full [N, V] logits (and their fp32
  copy). The ground truth for tests and the "eager" baseline of the benchmarks; never dispatched to.
* a **per-chunk step** ``step(z, y, loss_out, inv_D, ignore_index, compute_grad)``:
  :func:`ce_chunk_step_torch` here, or ``ce_chunk_step_triton`` in ``triton_linear_cross_entropy.py``.
* :class:`ChunkedLinearCrossEntropyFunction` — the one autograd Function: the chunk loop below with
  the step it is given.
* :func:`fused_linear_cross_entropy` — the one dispatch decision (``use_triton``: Triton step on CUDA
  or when forced, the PyTorch step elsewhere) and the function the model calls;
  :func:`chunked_linear_cross_entropy` is the same loop with the PyTorch step on any device.

Rows whose label is ``ignore_index`` (the prompt, padding) are dropped **before any matmul**: their
loss and gradient are exactly 0, so the loop runs over the labelled rows only (one host sync to count
them) and scatters their ``dH`` back. The loop computes every gradient **in the forward pass**, chunk
by chunk (Liger-Kernel's scheme): for a chunk of C tokens, ``z = H_c W.T + b`` ([C, V], input dtype) is overwritten in place by
``dz = (softmax(z) - onehot(y)) / D`` (zero rows for ignored labels), then ``dH_c = dz W``,
``dW += dz.T H_c``, ``db += sum_rows dz``. ``dW`` / ``db`` accumulate in fp32 for half-precision
weights (fp64 for fp64) and are cast to the weight dtype at the end. Backward only multiplies the
stored gradients by the upstream scalar. Peak extra memory is therefore one [C, V] logits chunk plus
the gradients themselves, never [N, V]; the price is that gradients are computed even when backward is
never called; the chunked functions skip all gradient work under ``torch.no_grad()`` and for inputs
that do not require grad.

Chunk size (:func:`default_chunk_size`), sized to the device: on CUDA Liger's rule, a logits chunk
about as large as ``hidden`` (``C = next_power_of_2(ceil(N / ceil(V / d)))``); on CPU, where every
chunk re-reads the whole [V, d] weight three times from memory, as many rows as fit in a 256 MiB
fp32 logits chunk (at most N). Either way one chunk never exceeds the eager loss's own [N, V]
logits, so peak memory stays at or below eager's. Dtypes: matmuls in the input (or autocast)
dtype, softmax statistics in fp32 (fp64 for fp64), ``dW``/``db`` accumulated in fp32 for
half-precision weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .dispatch import use_triton
from .numerics import stat_dtype

__all__ = [
    "fused_linear_cross_entropy",
    "linear_cross_entropy_reference",
    "chunked_linear_cross_entropy",
    "ChunkedLinearCrossEntropyFunction",
    "ce_chunk_step_torch",
    "default_chunk_size",
]


def _empty(*size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocation hook for buffers the chunk steps write (tests replace it to poison them with NaN)."""
    return torch.empty(*size, dtype=dtype, device=device)


_acc_dtype = stat_dtype
CPU_CHUNK_BYTES = 256 * 2**20  # one fp32 logits chunk on CPU


def default_chunk_size(num_tokens: int, vocab: int, width: int, device_type: str = "cuda") -> int:
    """Rows per logits chunk: Liger's rule on CUDA ([C, V] ≈ the [N, d] hidden states), a 256 MiB
    fp32 budget on CPU (memory bandwidth, not capacity, is what a CPU chunk costs). Never above N."""
    if num_tokens <= 0:
        return 1
    if device_type == "cpu":
        return max(1, min(num_tokens, CPU_CHUNK_BYTES // (4 * max(vocab, 1))))
    factor = max(1, math.ceil(vocab / max(width, 1)))
    chunk = math.ceil(num_tokens / factor)
    return min(1 << (chunk - 1).bit_length(), max(num_tokens, 1))


def _flatten(hidden, weight, labels, bias):
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"weight must be [V, d] with d = hidden.shape[-1] = {hidden.shape[-1]}, got {tuple(weight.shape)}"
        )
    if tuple(labels.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"labels {tuple(labels.shape)} must match hidden's leading dims {tuple(hidden.shape[:-1])} "
            "(pass labels already shifted: labels[n] is the token position n predicts)"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer token ids, got {labels.dtype}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    return hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)


def _denominator(labels, ignore_index, num_items_in_batch, dtype, device) -> torch.Tensor:
    """D as a 0-d tensor (no host sync): num_items_in_batch, else max(#non-ignored labels, 1)."""
    if num_items_in_batch is None:
        return (labels != ignore_index).sum().clamp_min(1).to(device=device, dtype=dtype)
    return torch.as_tensor(num_items_in_batch).to(device=device, dtype=dtype).reshape(())


def linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Eager reference (module docstring): full logits, fp32 CE sum, divided by D. ``chunk_size`` is ignored."""
    hidden2, labels2 = _flatten(hidden, weight, labels, bias)
    logits = F.linear(hidden2, weight, bias)
    acc = _acc_dtype(logits.dtype)
    loss_sum = F.cross_entropy(
        logits.to(acc), labels2.to(logits.device), ignore_index=ignore_index, reduction="sum"
    )
    return loss_sum / _denominator(labels2, ignore_index, num_items_in_batch, acc, logits.device)


CeStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, bool], None]


def ce_chunk_step_torch(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_out: torch.Tensor,
    inv_denominator: torch.Tensor,
    ignore_index: int,
    compute_grad: bool,
) -> None:
    """PyTorch per-chunk step: ``loss_out[n] = l_n``; if ``compute_grad``, ``logits`` <- ``dz`` in place.

    In the statistics dtype; when that is the logits' own dtype (fp32/fp64) every [C, V] operation
    is in place (no temporaries beyond the row statistics).
    """
    acc = loss_out.dtype
    z = logits if logits.dtype == acc else logits.to(acc)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))[:, None]
    lse = torch.logsumexp(z, dim=-1)
    loss_out.copy_(torch.where(valid, lse - z.gather(1, safe)[:, 0], torch.zeros_like(lse)))
    if compute_grad:
        grad = z.sub_(lse[:, None]).exp_() if z is logits else torch.exp(z.sub_(lse[:, None]))
        grad.scatter_add_(1, safe, torch.full_like(safe, -1, dtype=acc))
        grad.mul_((valid.to(acc) * inv_denominator)[:, None])
        if grad is not logits:
            logits.copy_(grad)


def chunked_loss_and_grads(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None,
    ignore_index: int,
    num_items_in_batch,
    chunk_size: int | None,
    step: CeStep,
    need_grads: tuple[bool, bool, bool],
):
    """The shared chunk loop. Returns ``(loss, dH [N, d] | None, dW | None, db | None)`` for upstream 1.

    Gradients come back in the dtypes of ``hidden`` / ``weight`` / ``bias``.
    """
    device = hidden.device
    # Mixed precision: under autocast the lm_head matmuls run in the autocast dtype (as they would in
    # eager); otherwise in the promoted dtype of hidden and weight. Autocast is switched off inside.
    if torch.is_autocast_enabled(device.type):
        cdt = torch.get_autocast_dtype(device.type)
    else:
        cdt = torch.promote_types(hidden.dtype, weight.dtype)
    with torch.autocast(device.type, enabled=False):
        return _chunk_loop(
            hidden, weight, labels, bias, ignore_index, num_items_in_batch, chunk_size, step, need_grads, cdt
        )


def _chunk_loop(
    hidden, weight, labels, bias, ignore_index, num_items_in_batch, chunk_size, step, need_grads, cdt
):
    device = hidden.device
    acc = _acc_dtype(cdt)
    labels = labels.to(device)
    inv_d = (1.0 / _denominator(labels, ignore_index, num_items_in_batch, acc, device)).reshape(1)
    rows = (labels != ignore_index).nonzero().squeeze(1)  # the one host sync: how many rows have labels
    if rows.numel() == labels.numel():
        loss, grad_h, grad_w, grad_b = _labelled_loop(
            hidden, weight, labels, bias, ignore_index, inv_d, chunk_size, step, need_grads, cdt, acc
        )
        return loss, grad_h, grad_w, grad_b
    loss, grad_rows, grad_w, grad_b = _labelled_loop(
        hidden.index_select(0, rows), weight, labels.index_select(0, rows), bias, ignore_index, inv_d,
        chunk_size, step, need_grads, cdt, acc,
    )  # fmt: skip
    grad_h = None
    if grad_rows is not None:
        grad_h = torch.zeros_like(hidden).index_copy_(0, rows, grad_rows)
    return loss, grad_h, grad_w, grad_b


def _labelled_loop(hidden, weight, labels, bias, ignore_index, inv_d, chunk_size, step, need_grads, cdt, acc):
    """The chunk loop over rows that (mostly) carry labels; returns loss and gradients for upstream 1."""
    n_tokens, width = hidden.shape
    vocab = weight.shape[0]
    device = hidden.device
    need_h, need_w, need_b = need_grads
    compute_grad = need_h or need_w or need_b
    chunk = chunk_size or default_chunk_size(n_tokens, vocab, width, device.type)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk}")
    w = weight.to(cdt)
    b = None if bias is None else bias.to(cdt)

    loss_rows = _empty(n_tokens, dtype=acc, device=device)
    grad_h = _empty(n_tokens, width, dtype=hidden.dtype, device=device) if need_h else None
    w_acc = acc if torch.float16 in (cdt, weight.dtype) or torch.bfloat16 in (cdt, weight.dtype) else cdt
    grad_w = torch.zeros(vocab, width, dtype=w_acc, device=device) if need_w else None
    grad_b = torch.zeros(vocab, dtype=acc, device=device) if need_b else None
    for start in range(0, n_tokens, chunk):
        end = min(start + chunk, n_tokens)
        h_c = hidden[start:end].to(cdt)
        z = F.linear(h_c, w, b)  # [C, V] in the compute dtype; becomes dz in place
        step(z, labels[start:end], loss_rows[start:end], inv_d, ignore_index, compute_grad)
        if need_h:
            if grad_h.dtype == cdt:
                torch.mm(z, w, out=grad_h[start:end])
            else:
                grad_h[start:end] = torch.mm(z, w)
        if need_w:
            if w_acc == cdt:
                grad_w.addmm_(z.t(), h_c)
            else:
                grad_w += torch.mm(z.t(), h_c).to(w_acc)
        if need_b:
            grad_b += z.sum(dim=0, dtype=acc)
        del z
    loss = loss_rows.sum() * inv_d[0]
    if grad_w is not None:
        grad_w = grad_w.to(weight.dtype)
    if grad_b is not None:
        grad_b = grad_b.to(bias.dtype)
    return loss, grad_h, grad_w, grad_b


def _scale_grads(grad_output: torch.Tensor, *grads):
    if torch.equal(grad_output, torch.ones_like(grad_output)):  # the usual case: one host sync, no copies
        return grads
    return tuple(None if g is None else g * grad_output.to(g.dtype) for g in grads)


class ChunkedLinearCrossEntropyFunction(torch.autograd.Function):
    """``apply(hidden [N, d], weight [V, d], labels [N], bias | None, ignore_index, num_items, chunk_size,
    step)``: the chunk loop with the given per-chunk ``step``; gradients computed in forward (module
    docstring) and scaled by the upstream gradient in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, bias, ignore_index, num_items_in_batch, chunk_size, step):
        need = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[3],
        )
        loss, grad_h, grad_w, grad_b = chunked_loss_and_grads(
            hidden, weight, labels, bias, ignore_index, num_items_in_batch, chunk_size, step, need
        )
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grad_h, grad_w, grad_b = _scale_grads(grad_output, *ctx.saved_tensors)
        return grad_h, grad_w, None, grad_b, None, None, None, None


def _run_chunked(step: CeStep, hidden, weight, labels, bias, ignore_index, num_items_in_batch, chunk_size):
    hidden2, labels2 = _flatten(hidden, weight, labels, bias)
    if not torch.is_grad_enabled():  # evaluation: loss only, no gradient work
        return chunked_loss_and_grads(
            hidden2,
            weight,
            labels2,
            bias,
            ignore_index,
            num_items_in_batch,
            chunk_size,
            step,
            (False, False, False),
        )[0]
    return ChunkedLinearCrossEntropyFunction.apply(
        hidden2, weight, labels2, bias, ignore_index, num_items_in_batch, chunk_size, step
    )


def chunked_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The chunked loss with the PyTorch step on any device (never [N, V] logits); reference contract."""
    return _run_chunked(
        ce_chunk_step_torch, hidden, weight, labels, bias, ignore_index, num_items_in_batch, chunk_size
    )


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The loss the model calls: the chunked loop with the Triton step on CUDA (or when forced), the
    PyTorch step elsewhere — the one backend decision for this op.

    Args:
        hidden: [N, d] (or [..., d]) final hidden states of the generator, the ``lm_head`` input.
        weight: [V, d] ``lm_head.weight`` — pass it from inside the module's forward (or gathered) so
            FSDP / ZeRO-3 hand over the full matrix.
        labels: [N] (or [...]) integer targets, already shifted; ``ignore_index`` marks positions to skip.
        bias: optional [V] ``lm_head.bias``.
        ignore_index: label value that contributes neither loss nor gradient.
        num_items_in_batch: divide the summed loss by this (gradient accumulation) instead of the
            number of non-ignored labels.
        chunk_size: tokens per chunk (default: :func:`default_chunk_size` for the device).

    Returns:
        0-d loss tensor, fp32 (fp64 for fp64 inputs).
    """
    if use_triton(hidden, weight, bias):
        from .triton_linear_cross_entropy import ce_chunk_step_triton as step
    else:
        step = ce_chunk_step_torch
    return _run_chunked(step, hidden, weight, labels, bias, ignore_index, num_items_in_batch, chunk_size)
