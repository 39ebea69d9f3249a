"""Fused linear cross-entropy: Triton chunked kernel (interpreter on CPU) and the chunked PyTorch path vs
the float64 eager reference, loss and every gradient; the reference vs transformers' ForCausalLMLoss and
finite differences.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from flythinker.kernels.linear_cross_entropy import (
    chunked_linear_cross_entropy,
    default_chunk_size,
    fused_linear_cross_entropy,
    linear_cross_entropy_reference,
)
from tests.kernels._compare import assert_close

# (loss, gradients) tolerance against the float64 reference on the same upcast inputs, relative to the
# largest magnitude of the expected tensor (atol = rtol = tol * max|expected|). Half-precision logits are
# rounded once (as the lm_head output is in transformers) and the logits gradient is stored in the input
# dtype before the two gradient matmuls, exactly as in the eager path — whose own error vs float64 is of
# the same size (measured: bf16 grads ~5e-3, fp16 ~8e-4, fp32 ~7e-7 of max|grad|).
TOL = {
    torch.float64: (1e-12, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (5e-4, 3e-3),
    torch.bfloat16: (2e-3, 2e-2),
}


def _close_rel(actual, expected, tol, name):
    scale = max(expected.detach().abs().max().item(), 1e-30)
    assert_close(actual, expected, tol * scale, tol, name)


def _problem(n, d, vocab, dtype, device, bias, ignore="some", seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen).to(device, dtype)
    weight = (torch.randn(vocab, d, generator=gen) / math.sqrt(d) * 3).to(device, dtype)
    b = (torch.randn(vocab, generator=gen) * 0.5).to(device, dtype) if bias else None
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[0] = vocab - 1  # the last column, past any block boundary
    if ignore == "some":
        labels[1::3] = -100
    elif ignore == "all":
        labels[:] = -100
    return hidden, weight, b, labels.to(device)


def _leaves(*xs, dtype=None):
    return [None if x is None else x.detach().clone().to(dtype or x.dtype).requires_grad_() for x in xs]


def _run(fn, hidden, weight, bias, labels, upstream, **kw):
    ins = _leaves(hidden, weight, bias)
    loss = fn(ins[0], ins[1], labels, ins[2], **kw)
    grads = torch.autograd.grad(loss * upstream, [x for x in ins if x is not None])
    return loss, grads


def _triton_fn(block_v):
    from flythinker.kernels.linear_cross_entropy import ChunkedLinearCrossEntropyFunction
    from flythinker.kernels.triton_linear_cross_entropy import ce_chunk_step_triton

    def step(z, y, loss_out, inv_d, ignore, compute_grad):
        ce_chunk_step_triton(z, y, loss_out, inv_d, ignore, compute_grad, block_v)

    def fn(hidden, weight, labels, bias, *, ignore_index=-100, num_items_in_batch=None, chunk_size=None):
        return ChunkedLinearCrossEntropyFunction.apply(
            hidden, weight, labels, bias, ignore_index, num_items_in_batch, chunk_size, step
        )

    return fn


CASES = [  # (N, d, V, chunk_size, block_v)
    (1, 64, 257, None, None),
    (7, 123, 257, 3, 64),
    (33, 64, 1000, 8, 256),
    (33, 96, 1000, None, None),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_triton_vs_float64_reference(case, dtype, bias, device, force_triton, poison):
    n, d, vocab, chunk, block_v = case
    hidden, weight, b, labels = _problem(n, d, vocab, dtype, device, bias, seed=n + vocab)
    upstream = 2.5
    loss, grads = _run(_triton_fn(block_v), hidden, weight, b, labels, upstream, chunk_size=chunk)
    ref_loss, ref_grads = _run(
        linear_cross_entropy_reference, *_leaves(hidden, weight, b, dtype=torch.float64)[:2],
        None if b is None else b.double(), labels, upstream,
    )  # fmt: skip
    loss_tol, grad_tol = TOL[dtype]
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    _close_rel(loss, ref_loss, loss_tol, "loss")
    for name, g, rg in zip(["d_hidden", "d_weight", "d_bias"], grads, ref_grads):
        assert g.dtype == dtype, name
        _close_rel(g, rg, grad_tol, name)


@pytest.mark.parametrize("ignore", ["none", "all"])
@pytest.mark.parametrize("path", ["triton", "chunked", "reference"])
def test_ignore_patterns(ignore, path, device, force_triton, poison):
    """No ignored labels, and all ignored: then the loss is exactly 0 and every gradient exactly 0."""
    hidden, weight, b, labels = _problem(7, 64, 257, torch.float64, device, True, ignore=ignore, seed=2)
    fn = {"triton": _triton_fn(64), "chunked": chunked_linear_cross_entropy,
          "reference": linear_cross_entropy_reference}[path]  # fmt: skip
    loss, grads = _run(fn, hidden, weight, b, labels, 1.0, chunk_size=3)
    if ignore == "all":
        assert loss.item() == 0.0
        for g in grads:
            assert torch.count_nonzero(g) == 0
    else:
        ref = F.cross_entropy(F.linear(hidden, weight, b), labels)  # mean over all
        assert_close(loss, ref, 1e-12, 1e-12, "loss")


@pytest.mark.parametrize("path", ["triton", "chunked"])
@pytest.mark.parametrize("num_items", [None, 11, "tensor"])
def test_num_items_in_batch_and_chunked_path(path, num_items, device, force_triton, poison):
    hidden, weight, b, labels = _problem(33, 64, 257, torch.float32, device, False, seed=4)
    if num_items == "tensor":
        num_items = torch.tensor(40, device=device)
    fn = _triton_fn(128) if path == "triton" else chunked_linear_cross_entropy
    loss, grads = _run(fn, hidden, weight, None, labels, 0.5, num_items_in_batch=num_items, chunk_size=5)
    ref_loss, ref_grads = _run(
        linear_cross_entropy_reference, *_leaves(hidden, weight, dtype=torch.float64), None, labels, 0.5,
        num_items_in_batch=num_items,
    )  # fmt: skip
    _close_rel(loss, ref_loss, 1e-5, "loss")
    for g, rg in zip(grads, ref_grads):
        _close_rel(g, rg, 1e-5, "grad")


def test_dispatch_functional_leading_dims(device, force_triton, poison):
    """[B, T, d] hidden with [B, T] labels through the public dispatching function."""
    hidden, weight, b, labels = _problem(14, 64, 257, torch.float32, device, True, seed=6)
    loss = fused_linear_cross_entropy(hidden.reshape(2, 7, 64), weight, labels.reshape(2, 7), b)
    ref = linear_cross_entropy_reference(hidden, weight, labels, b)
    assert_close(loss, ref, 1e-5, 1e-5, "loss")


def test_chunk_step_writes_every_element(device, force_triton):
    """Call the Triton step on NaN-poisoned loss rows; every grad element must equal the torch step."""
    from flythinker.kernels.linear_cross_entropy import ce_chunk_step_torch
    from flythinker.kernels.triton_linear_cross_entropy import ce_chunk_step_triton

    gen = torch.Generator().manual_seed(8)
    z = torch.randn(9, 1000, generator=gen, dtype=torch.float64).to(device) * 4
    labels = torch.tensor([0, 999, -100, 5, 500, -100, 7, 128, 255], device=device)
    inv_d = torch.tensor([1 / 7], dtype=torch.float64, device=device)
    z_t, z_r = z.clone(), z.clone()
    loss_t = torch.full((9,), math.nan, dtype=torch.float64, device=device)
    loss_r = torch.empty(9, dtype=torch.float64, device=device)
    ce_chunk_step_triton(z_t, labels, loss_t, inv_d, -100, True, block_v=128)
    ce_chunk_step_torch(z_r, labels, loss_r, inv_d, -100, True)
    assert_close(loss_t, loss_r, 1e-12, 1e-12, "loss rows")
    assert_close(z_t, z_r, 1e-14, 1e-12, "dz")
    # forward-only mode leaves the logits untouched
    z_f = z.clone()
    ce_chunk_step_triton(z_f, labels, loss_t, inv_d, -100, False, block_v=128)
    assert torch.equal(z_f, z)


def test_out_of_range_label_gives_nan_not_garbage(device, force_triton):
    from flythinker.kernels.triton_linear_cross_entropy import ce_chunk_step_triton

    z = torch.randn(2, 257, dtype=torch.float64, device=device)
    loss = torch.zeros(2, dtype=torch.float64, device=device)
    ce_chunk_step_triton(
        z,
        torch.tensor([3, 257], device=device),
        loss,
        torch.ones(1, dtype=torch.float64, device=device),
        -100,
        False,
    )
    assert torch.isfinite(loss[0]) and torch.isnan(loss[1])


# ---------------------------------------------------------------- references


@pytest.mark.parametrize("num_items", [None, 6])
@pytest.mark.parametrize("bias", [False, True])
def test_reference_matches_transformers_for_causal_lm_loss(num_items, bias):
    """Unshifted labels through transformers' ForCausalLMLoss == our loss on labels shifted by hand.

    float32 inputs: ForCausalLMLoss always computes in float32 (``logits.float()``), so do we.
    """
    from transformers.loss.loss_utils import ForCausalLMLoss

    gen = torch.Generator().manual_seed(9)
    batch, seq, d, vocab = 2, 6, 16, 37
    hidden = torch.randn(batch, seq, d, generator=gen)
    lm_head = torch.nn.Linear(d, vocab, bias=bias)
    labels = torch.randint(0, vocab, (batch, seq), generator=gen)
    labels[0, :2] = -100
    labels[1, 4] = -100
    hf = ForCausalLMLoss(lm_head(hidden), labels, vocab, num_items_in_batch=num_items)
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:]
    ours = linear_cross_entropy_reference(
        hidden, lm_head.weight, shifted, lm_head.bias, num_items_in_batch=num_items
    )
    chunked = chunked_linear_cross_entropy(
        hidden, lm_head.weight, shifted, lm_head.bias, num_items_in_batch=num_items, chunk_size=4
    )
    assert_close(ours, hf, 1e-6, 1e-6, "reference")
    assert_close(chunked, hf, 1e-6, 1e-6, "chunked")


@pytest.mark.parametrize("num_items", [None, 9])
def test_reference_gradcheck(num_items):
    gen = torch.Generator().manual_seed(10)
    hidden = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, -100, 6, 0, 3])

    def ref(h, w, b):
        return linear_cross_entropy_reference(h, w, labels, b, num_items_in_batch=num_items)

    def chunked(h, w, b):
        return chunked_linear_cross_entropy(h, w, labels, b, num_items_in_batch=num_items, chunk_size=2)

    assert torch.autograd.gradcheck(ref, (hidden, weight, bias), eps=1e-6, atol=1e-8)
    assert torch.autograd.gradcheck(chunked, (hidden, weight, bias), eps=1e-6, atol=1e-8)


def test_default_chunk_size_rule():
    assert default_chunk_size(8192, 151936, 3584) == 256  # CUDA, Liger's rule: ceil(8192 / 43) = 191 -> 256
    assert default_chunk_size(1, 32000, 576) == 1
    assert default_chunk_size(100, 10, 64) == 100  # never larger than N
    assert default_chunk_size(8192, 49152, 576, "cpu") == 1365  # CPU: a 256 MiB fp32 chunk
    assert default_chunk_size(256, 49152, 576, "cpu") == 256  # ... never larger than N


def test_unlabelled_rows_are_skipped_before_the_matmul(monkeypatch):
    """Rows with ignore_index never reach the lm_head matmul, and the result equals the eager loss."""
    from flythinker.kernels import linear_cross_entropy as lce

    rows_seen = []
    real_linear = lce.F.linear
    monkeypatch.setattr(
        lce.F, "linear", lambda h, w, b=None: rows_seen.append(h.shape[0]) or real_linear(h, w, b)
    )
    hidden, weight, b, labels = _problem(40, 16, 53, torch.float64, "cpu", True, seed=5)
    labels[::3] = -100
    hidden.requires_grad_(True)
    loss = chunked_linear_cross_entropy(hidden, weight, labels, b)
    (dh,) = torch.autograd.grad(loss, [hidden])
    assert sum(rows_seen) == int((labels != -100).sum())
    monkeypatch.setattr(lce.F, "linear", real_linear)
    ref = linear_cross_entropy_reference(hidden, weight, labels, b)
    (dh_ref,) = torch.autograd.grad(ref, [hidden])
    assert_close(loss, ref, 1e-12, 1e-12, "loss")
    assert_close(dh, dh_ref, 1e-12, 1e-12, "dH")
    assert (dh[::3] == 0).all()
    with pytest.raises(ValueError, match="labels"):
        linear_cross_entropy_reference(torch.randn(3, 4), torch.randn(5, 4), torch.zeros(2, dtype=torch.long))


# ---------------------------------------------------------------- GPU only: compiled kernel, large shapes


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_gpu_large_vocab(dtype, force_triton, poison):
    """4k tokens x 1024 x 32k vocab (several 32k-wide column blocks per row with the default block)."""
    hidden, weight, b, labels = _problem(4096, 1024, 32003, dtype, "cuda", True, seed=31)
    loss, grads = _run(fused_linear_cross_entropy, hidden, weight, b, labels, 1.0)
    ref_loss, ref_grads = _run(
        linear_cross_entropy_reference, *_leaves(hidden, weight, dtype=torch.float64), b.double(), labels, 1.0
    )
    loss_tol, grad_tol = TOL[dtype]
    _close_rel(loss, ref_loss, loss_tol, "loss")
    for name, g, rg in zip(["d_hidden", "d_weight", "d_bias"], grads, ref_grads):
        _close_rel(g, rg, grad_tol, name)


@pytest.mark.parametrize("path", ["triton", "chunked"])
def test_under_cpu_autocast(path, force_triton, poison):
    """fp32 master weights under bf16 autocast: matmuls in bf16 like eager, grads in fp32."""
    if torch.cuda.is_available():
        pytest.skip("CPU autocast case")
    hidden, weight, b, labels = _problem(33, 64, 257, torch.float32, "cpu", True, seed=40)
    fn = _triton_fn(128) if path == "triton" else chunked_linear_cross_entropy
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = _run(fn, hidden, weight, b, labels, 1.0, chunk_size=8)
        ref_loss, ref_grads = _run(linear_cross_entropy_reference, hidden, weight, b, labels, 1.0)
    assert loss.dtype == torch.float32
    _close_rel(loss, ref_loss, TOL[torch.bfloat16][0], "loss")
    for g, rg in zip(grads, ref_grads):
        assert g.dtype == torch.float32
        _close_rel(g, rg, TOL[torch.bfloat16][1], "grad")


@pytest.mark.parametrize("path", ["triton", "chunked"])
def test_no_grad_forward_matches(path, device, force_triton, poison):
    hidden, weight, b, labels = _problem(33, 64, 257, torch.float64, device, True, seed=41)
    fn = fused_linear_cross_entropy if path == "triton" else chunked_linear_cross_entropy  # forced: Triton
    with torch.no_grad():
        loss = fn(*_leaves(hidden, weight), labels, b, chunk_size=5)
    assert not loss.requires_grad
    assert_close(loss, linear_cross_entropy_reference(hidden, weight, labels, b), 1e-12, 1e-12, "loss")
