"""Triton latent injection: ``@triton.jit`` kernels -> host launchers (the autograd Functions and the
functional entries are :mod:`flythinker.kernels.triton_injection_autograd`).

This module imports triton at top level, so it is only ever imported lazily (from
:mod:`flythinker.kernels.injection` on the first Triton call). Equations: see ``injection.py``.

Layout: one program per output row ``(b, i)`` of the flattened ``[B*T, d_G]`` result, one column block
of ``next_power_of_2(d_G)`` covering the whole row (``d_R <= d_G`` columns of the source are loaded
with a mask; the rest is the zero pad). Statistics (‖src‖², the scale) are computed in fp32 (fp64 for
fp64 embeddings); the per-row scale ``λ·g·m̄/max(‖src‖, eps)`` (0 where the gate is 0) is saved for
backward, so backward never recomputes a norm — ‖h‖ is a constant there by construction.

Backward program ``(b, i)`` reads ``dout[b, i]`` once and writes ``d src[b, i]``: into
``d_hidden[b, i-1]`` for ``i >= 1`` and into ``d_prev[b]`` for ``i == 0``; the same ``i == 0``
program also zero-fills ``d_hidden[b, T-1]`` (no later position reads ``h[T-1]``), so every element of
every gradient is written exactly once. With the fused gather, ``dout[b, i]`` is also
``tl.atomic_add``-ed into row ``ids[b, i]`` of an fp32 (fp64 for fp64) gradient table (one program per row; repeated
token ids accumulate atomically, hence in a non-deterministic order).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dispatch import check_kernel_device, interpreting

__all__ = [
    "latent_injection_forward",
    "latent_injection_backward",
]


@triton.jit
def _source_row(hid_ptr, prev_ptr, row, b, i, d_r, cols, r_mask, HAS_PREV: tl.constexpr, ACC: tl.constexpr,
                BLOCK: tl.constexpr):  # fmt: skip
    """The source of output row (b, i): u[b, i-1] for i ≥ 1, ``prev[b]`` (zeros without one) for i = 0."""
    if i > 0:
        src = tl.load(hid_ptr + (row - 1) * d_r + cols, mask=r_mask, other=0.0).to(ACC)
    else:
        if HAS_PREV:
            src = tl.load(prev_ptr + b * d_r + cols, mask=r_mask, other=0.0).to(ACC)
        else:
            src = tl.zeros([BLOCK], dtype=ACC)
    return src


@triton.jit
def _latent_injection_fwd_kernel(
    out_ptr,
    emb_ptr,
    ids_ptr,
    table_ptr,
    hid_ptr,
    prev_ptr,
    gate_ptr,
    cgate_ptr,
    params_ptr,
    scale_ptr,
    T,
    d_g,
    d_r,
    GATHER: tl.constexpr,
    HAS_PREV: tl.constexpr,
    HAS_CGATE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b = row // T
    i = row - b * T
    cols = tl.arange(0, BLOCK)
    g_mask = cols < d_g
    r_mask = cols < d_r

    if GATHER:
        tok = tl.load(ids_ptr + row).to(tl.int64)
        emb = tl.load(table_ptr + tok * d_g + cols, mask=g_mask, other=0.0)
    else:
        emb = tl.load(emb_ptr + row * d_g + cols, mask=g_mask, other=0.0)

    gate = tl.load(gate_ptr + row).to(ACC)
    src = _source_row(hid_ptr, prev_ptr, row, b, i, d_r, cols, r_mask, HAS_PREV, ACC, BLOCK)
    if not HAS_PREV:
        if i == 0:
            gate = gate * 0.0  # the first position of a prompt has no predecessor

    coef = tl.load(params_ptr).to(ACC)  # λ·m̄
    eps = tl.load(params_ptr + 1).to(ACC)
    norm = tl.maximum(tl.sqrt(tl.sum(src * src, axis=0)), eps)
    active = (gate != 0.0) & (norm > 0.0)  # a zero state (eps = 0) gets no injection and no gradient
    scale = tl.where(active, coef * gate / tl.where(active, norm, 1.0), 0.0)
    tl.store(scale_ptr + row, scale)

    rescaled = src * scale
    if HAS_CGATE:
        rescaled = rescaled * tl.load(cgate_ptr + cols, mask=r_mask, other=0.0).to(ACC)
    out = emb.to(ACC) + tl.where(r_mask, rescaled, 0.0)
    tl.store(out_ptr + row * d_g + cols, out.to(out_ptr.dtype.element_ty), mask=g_mask)


@triton.jit
def _latent_injection_bwd_kernel(
    dout_ptr,
    scale_ptr,
    dhid_ptr,
    dprev_ptr,
    ids_ptr,
    dtable_ptr,
    hid_ptr,
    prev_ptr,
    cgate_ptr,
    dcgate_ptr,
    T,
    d_g,
    d_r,
    GATHER: tl.constexpr,
    HAS_PREV: tl.constexpr,
    HAS_CGATE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b = row // T
    i = row - b * T
    cols = tl.arange(0, BLOCK)
    r_mask = cols < d_r

    if GATHER:
        g_mask = cols < d_g
        dout_full = tl.load(dout_ptr + row * d_g + cols, mask=g_mask, other=0.0).to(
            dtable_ptr.dtype.element_ty
        )
        tok = tl.load(ids_ptr + row).to(tl.int64)
        tl.atomic_add(dtable_ptr + tok * d_g + cols, dout_full, mask=g_mask)

    scale = tl.load(scale_ptr + row)
    dout_r = tl.load(dout_ptr + row * d_g + cols, mask=r_mask, other=0.0).to(ACC)
    dsrc = dout_r * scale
    if HAS_CGATE:
        # d c += scale · src ⊙ dout (rows with scale 0 contribute nothing and skip the atomics)
        src = _source_row(hid_ptr, prev_ptr, row, b, i, d_r, cols, r_mask, HAS_PREV, ACC, BLOCK)
        if scale != 0.0:
            tl.atomic_add(dcgate_ptr + cols, dsrc * src, mask=r_mask)
        dsrc = dsrc * tl.load(cgate_ptr + cols, mask=r_mask, other=0.0).to(ACC)
    if i > 0:
        tl.store(dhid_ptr + (row - 1) * d_r + cols, dsrc.to(dhid_ptr.dtype.element_ty), mask=r_mask)
    else:
        # position 0 feeds on prev_hidden; h[b, T-1] feeds nothing in this chunk -> zero gradient.
        zero = tl.zeros([BLOCK], dtype=ACC)
        tl.store(dhid_ptr + (b * T + T - 1) * d_r + cols, zero.to(dhid_ptr.dtype.element_ty), mask=r_mask)
        if HAS_PREV:
            tl.store(dprev_ptr + b * d_r + cols, dsrc.to(dprev_ptr.dtype.element_ty), mask=r_mask)


def _empty(*size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocation hook for every kernel-written buffer (tests replace it to poison outputs with NaN)."""
    return torch.empty(*size, dtype=dtype, device=device)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _launch_config(d_g: int) -> tuple[int, int]:
    block = triton.next_power_of_2(d_g)
    if interpreting():
        return block, 1
    # at most 16 elements per thread above BLOCK 1024: spill-free on sm_80 and sm_90 (bench/aot_compile.py)
    num_warps = 4 if block <= 1024 else 8 if block <= 2048 else 16 if block <= 4096 else 32
    return block, num_warps


def latent_injection_forward(
    inputs_embeds: torch.Tensor | None,
    input_ids: torch.Tensor | None,
    embedding_weight: torch.Tensor | None,
    reasoner_hidden: torch.Tensor,
    gate: torch.Tensor,
    mean_norm: torch.Tensor | float,
    fusion_lambda: float,
    norm_eps: float,
    prev_hidden: torch.Tensor | None,
    channel_gate: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel. Returns ``(out [B, T, d_G], scale [B*T] in the statistics dtype)``.

    Either ``inputs_embeds`` ([B, T, d_G]) or ``input_ids`` ([B, T]) + ``embedding_weight`` ([V, d_G]).
    """
    gather = inputs_embeds is None
    batch, seq, d_r = reasoner_hidden.shape
    if gather:
        table = embedding_weight.contiguous()
        out_dtype, d_g, device = table.dtype, table.shape[1], table.device
        ids = input_ids.contiguous()
        emb = table  # unused pointer
    else:
        emb = inputs_embeds.contiguous()
        out_dtype, d_g, device = emb.dtype, emb.shape[-1], emb.device
        ids = table = emb  # unused pointers
    acc = _acc_dtype(out_dtype)
    hid = reasoner_hidden.contiguous()
    prev = prev_hidden.to(hid.dtype).contiguous() if prev_hidden is not None else hid
    gate_f = gate.to(device=device, dtype=acc).contiguous()
    params = torch.stack(
        [
            fusion_lambda * torch.as_tensor(mean_norm, dtype=acc, device=device).reshape(()),
            torch.tensor(float(norm_eps), dtype=acc, device=device),
        ]
    )
    cgate = channel_gate.to(device=device, dtype=acc).contiguous() if channel_gate is not None else gate_f
    out = _empty(batch, seq, d_g, dtype=out_dtype, device=device)
    scale = _empty(batch * seq, dtype=acc, device=device)
    if batch * seq == 0:
        return out, scale
    block, num_warps = _launch_config(d_g)
    check_kernel_device(_latent_injection_fwd_kernel, out)
    _latent_injection_fwd_kernel[(batch * seq,)](
        out, emb, ids, table, hid, prev, gate_f, cgate, params, scale, seq, d_g, d_r,
        GATHER=gather, HAS_PREV=prev_hidden is not None, HAS_CGATE=channel_gate is not None,
        ACC=_tl_dtype(out_dtype), BLOCK=block,
        num_warps=num_warps,
    )  # fmt: skip
    return out, scale


def latent_injection_backward(
    grad_out: torch.Tensor,
    scale: torch.Tensor,
    hidden_dtype: torch.dtype,
    d_r: int,
    prev_dtype: torch.dtype | None,
    input_ids: torch.Tensor | None = None,
    num_embeddings: int | None = None,
    reasoner_hidden: torch.Tensor | None = None,
    prev_hidden: torch.Tensor | None = None,
    channel_gate: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Launch the backward kernel.

    Returns ``(d_hidden, d_prev or None, d_table in fp32/fp64 or None, d_channel_gate in fp32/fp64 or
    None)``; with a ``channel_gate`` the sources (``reasoner_hidden``, ``prev_hidden``) are re-read.
    """
    dout = grad_out.contiguous()
    batch, seq, d_g = dout.shape
    device = dout.device
    gather = input_ids is not None
    d_hidden = _empty(batch, seq, d_r, dtype=hidden_dtype, device=device)
    d_prev = _empty(batch, d_r, dtype=prev_dtype, device=device) if prev_dtype is not None else None
    table_acc = torch.float64 if dout.dtype == torch.float64 else torch.float32
    d_table = torch.zeros(num_embeddings, d_g, dtype=table_acc, device=device) if gather else None
    has_cgate = channel_gate is not None
    d_cgate = torch.zeros(d_r, dtype=scale.dtype, device=device) if has_cgate else None
    if batch * seq == 0:
        if d_prev is not None:
            d_prev.zero_()
        return d_hidden, d_prev, d_table, d_cgate
    ids = input_ids.contiguous() if gather else dout
    hid = reasoner_hidden.contiguous() if has_cgate else dout
    prev = prev_hidden.contiguous() if has_cgate and prev_hidden is not None else hid
    cgate = channel_gate.to(dtype=scale.dtype).contiguous() if has_cgate else dout
    block, num_warps = _launch_config(d_g)
    check_kernel_device(_latent_injection_bwd_kernel, dout)
    _latent_injection_bwd_kernel[(batch * seq,)](
        dout, scale, d_hidden, d_prev if d_prev is not None else d_hidden, ids,
        d_table if gather else dout, hid, prev, cgate, d_cgate if has_cgate else dout, seq, d_g, d_r,
        GATHER=gather, HAS_PREV=prev_dtype is not None, HAS_CGATE=has_cgate, ACC=_tl_dtype(scale.dtype),
        BLOCK=block, num_warps=num_warps,
    )  # fmt: skip
    return d_hidden, d_prev, d_table, d_cgate
