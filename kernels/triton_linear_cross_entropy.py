"""Triton per-chunk softmax / cross-entropy / logits-gradient kernel for the fused linear CE.

Imported lazily (it imports triton), and imports nothing but the dispatch helpers: the chunk loop,
matmuls (``torch.mm`` per chunk, as Liger-Kernel does), the autograd Function and the reduction
contract live in ``linear_cross_entropy.py``, which passes this step into its loop::

    one program per row n of a [C, V] logits chunk z (input dtype), fp32 (fp64) statistics:
      pass 1 over V in BLOCK_V columns: online max m and s = Σ exp(z - m)  ->  lse = m + log s
      l_n = lse - z[y_n]                       (0 and an all-zero gradient row when y_n == ignore_index;
                                                NaN when y_n is outside [0, V) — never an out-of-bounds read)
      pass 2: z[n, v] <- (exp(z[n, v] - lse) - [v == y_n]) / D      written in place, in z's dtype

``1/D`` is read from a device tensor, so no host synchronisation happens in forward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dispatch import check_kernel_device, interpreting

__all__ = ["ce_chunk_step_triton"]


@triton.jit
def _ce_chunk_kernel(
    z_ptr,
    z_stride,
    labels_ptr,
    loss_ptr,
    inv_d_ptr,
    n_cols,
    ignore_index,
    COMPUTE_GRAD: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = z_ptr + row * z_stride
    label = tl.load(labels_ptr + row).to(tl.int64)
    cols = tl.arange(0, BLOCK_V)

    if label == ignore_index:
        tl.store(loss_ptr + row, tl.zeros([], dtype=ACC))
        if COMPUTE_GRAD:
            for off in range(0, n_cols, BLOCK_V):
                c = off + cols
                tl.store(base + c, tl.zeros([BLOCK_V], dtype=z_ptr.dtype.element_ty), mask=c < n_cols)
        return

    m = tl.full([], float("-inf"), dtype=ACC)
    s = tl.zeros([], dtype=ACC)
    for off in range(0, n_cols, BLOCK_V):
        c = off + cols
        x = tl.load(base + c, mask=c < n_cols, other=float("-inf")).to(ACC)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)

    in_range = (label >= 0) & (label < n_cols)
    safe = tl.where(in_range, label, 0)
    z_label = tl.load(base + safe).to(ACC)
    z_label = tl.where(in_range, z_label, float("nan"))
    tl.store(loss_ptr + row, lse - z_label)

    if COMPUTE_GRAD:
        inv_d = tl.load(inv_d_ptr).to(ACC)
        for off in range(0, n_cols, BLOCK_V):
            c = off + cols
            mask = c < n_cols
            x = tl.load(base + c, mask=mask, other=float("-inf")).to(ACC)
            g = tl.exp(x - lse)
            g = tl.where(c == label, g - 1.0, g) * inv_d
            tl.store(base + c, g.to(z_ptr.dtype.element_ty), mask=mask)


def _block_v(vocab: int, block_v: int | None) -> tuple[int, int]:
    if block_v is None:
        # 16384 columns at most: 32768 spills registers in fp32 on sm_90 (bench/results/kernels_aot.md)
        block_v = min(triton.next_power_of_2(vocab), 1024 if interpreting() else 16384)
    if interpreting():
        return block_v, 1
    return block_v, 32 if block_v >= 8192 else 16 if block_v >= 2048 else 8


def ce_chunk_step_triton(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_out: torch.Tensor,
    inv_denominator: torch.Tensor,
    ignore_index: int,
    compute_grad: bool,
    block_v: int | None = None,
) -> None:
    """Launch the kernel on one chunk: fills ``loss_out`` [C]; if ``compute_grad``, ``logits`` <- dz in place."""
    rows, vocab = logits.shape
    if rows == 0:
        return
    if logits.stride(1) != 1:
        raise ValueError("logits chunk must be row-contiguous")
    block, num_warps = _block_v(vocab, block_v)
    check_kernel_device(_ce_chunk_kernel, logits)
    _ce_chunk_kernel[(rows,)](
        logits, logits.stride(0), labels.contiguous(), loss_out, inv_denominator, vocab, ignore_index,
        COMPUTE_GRAD=compute_grad, ACC=tl.float64 if loss_out.dtype == torch.float64 else tl.float32,
        BLOCK_V=block, num_warps=num_warps,
    )  # fmt: skip
