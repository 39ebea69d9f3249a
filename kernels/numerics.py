"""Numerical conventions shared by the references and the Triton kernels (no triton import here).

* Statistics (norms, softmax sums) are accumulated in fp32, or fp64 for fp64 inputs.
* The latent rescale divides by ``max(‖h‖, norm_eps)`` only where that is positive: an
  exactly-zero state (with ``norm_eps = 0``) gets scale 0 — no injection, zero gradient, never NaN —
  and every non-zero state is rescaled exactly (see :func:`injection_scale`).
"""

from __future__ import annotations

import torch

__all__ = ["stat_dtype", "injection_scale"]


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype for inputs of ``dtype``: fp64 for fp64, fp32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def injection_scale(
    norm: torch.Tensor, gate: torch.Tensor, coef: torch.Tensor, norm_eps: float
) -> torch.Tensor:
    """Per-row ``coef·gate / max(‖h‖, eps)``, and 0 where the gate or the denominator is 0.

    ``coef = λ·m̄``. The Triton kernels compute the same expression per program.
    """
    denom = norm.clamp_min(norm_eps) if norm_eps > 0 else norm
    active = (gate != 0) & (denom > 0)
    return torch.where(
        active, coef * gate / torch.where(active, denom, torch.ones_like(denom)), torch.zeros_like(denom)
    )
