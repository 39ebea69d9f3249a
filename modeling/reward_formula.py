"""PERM reward formula (arXiv 2601.10532), float and tensor versions.

The PERM reward of one policy output is

    R = M(s_res/5, s_exp/5, s_rec/5) + c_bys · (S_bys/100 − 1) − c_len · max(0, n_tokens − L)

with s_res, s_exp, s_rec ∈ [1, 5] (resonation judged on the ``# Analysis`` section, expression and
reception on the ``# Response`` section), bystander S_bys ∈ [0, 100] (five 0–20 items), defaults
c_bys = 0.5, c_len = 0.001, L = 768 and M the *harmonic* mean.  ``M`` is selectable:

* ``"harmonic"``   M = Σw / Σ(w/x)        (a zero component gives 0, the limit of the mean)
* ``"arithmetic"`` M = Σ(w·x) / Σw
* ``"geometric"``  M = exp(Σ(w·log x) / Σw)  (a zero component gives 0)
* ``"weighted"``   weighted arithmetic mean; ``weights`` is required (PERM's "mean" with weights)

``weights`` (one per dimension, in the order resonation, expression, reception, or a mapping by
name) defaults to equal weights and applies to every mode.  The three terms are also exposed on
their own (:func:`empathy_term`, :func:`bystander_term`, :func:`length_excess`) because GRPO logs and
weights them as separate reward functions (weights 1, ``c_bys`` and ``c_len``).

It lives in the modeling layer because the reward heads (``flythinker.modeling.heads``) use its tensor
functions; ``flythinker.rewards.formula`` re-exports it for the reward callables and judges. It
imports nothing from the rest of flythinker.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

EMPATHY_DIMENSIONS: tuple[str, str, str] = ("resonation", "expression", "reception")
ALL_DIMENSIONS: tuple[str, str, str, str] = (*EMPATHY_DIMENSIONS, "bystander")
COMBINE_MODES: tuple[str, ...] = ("harmonic", "arithmetic", "geometric", "weighted")

SCORE_MAX = 5.0
BYSTANDER_MAX = 100.0
DEFAULT_BYSTANDER_COEF = 0.5
DEFAULT_LENGTH_COEF = 0.001
DEFAULT_LENGTH_LIMIT = 768

__all__ = [
    "EMPATHY_DIMENSIONS",
    "ALL_DIMENSIONS",
    "COMBINE_MODES",
    "SCORE_MAX",
    "BYSTANDER_MAX",
    "DEFAULT_BYSTANDER_COEF",
    "DEFAULT_LENGTH_COEF",
    "DEFAULT_LENGTH_LIMIT",
    "combine",
    "empathy_term",
    "bystander_term",
    "length_excess",
    "perm_reward",
    "combine_tensor",
    "perm_reward_tensor",
]

WeightsLike = Sequence[float] | Mapping[str, float] | None


def _weights(weights: WeightsLike, mode: str, n: int = 3) -> list[float]:
    if mode not in COMBINE_MODES:
        raise ValueError(f"combine mode must be one of {COMBINE_MODES}, got {mode!r}")
    if weights is None:
        if mode == "weighted":
            raise ValueError("combine mode 'weighted' needs `weights` (resonation, expression, reception)")
        return [1.0] * n
    if isinstance(weights, Mapping):
        missing = [d for d in EMPATHY_DIMENSIONS[:n] if d not in weights]
        if missing:
            raise ValueError(
                f"weights mapping misses dimensions {missing}; expected keys {EMPATHY_DIMENSIONS}"
            )
        w = [float(weights[d]) for d in EMPATHY_DIMENSIONS[:n]]
    else:
        w = [float(x) for x in weights]
    if len(w) != n:
        raise ValueError(f"expected {n} weights (resonation, expression, reception), got {len(w)}")
    if any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {w}")
    return w


def combine(values: Sequence[float], mode: str = "harmonic", weights: WeightsLike = None) -> float:
    """Mean of already-normalised components ``values`` (each in [0, 1]) under ``mode``."""
    w = _weights(weights, mode, len(values))
    x = [float(v) for v in values]
    if any(v < 0 or math.isnan(v) for v in x):
        raise ValueError(f"components must be non-negative numbers, got {x}")
    if mode in ("arithmetic", "weighted"):
        return sum(wi * xi for wi, xi in zip(w, x)) / sum(w)
    if mode == "harmonic":
        if any(xi == 0 and wi > 0 for wi, xi in zip(w, x)):
            return 0.0
        return sum(w) / sum(wi / xi for wi, xi in zip(w, x) if wi > 0)
    if any(xi == 0 and wi > 0 for wi, xi in zip(w, x)):
        return 0.0
    return math.exp(sum(wi * math.log(xi) for wi, xi in zip(w, x) if wi > 0) / sum(w))


def empathy_term(
    resonation: float,
    expression: float,
    reception: float,
    mode: str = "harmonic",
    weights: WeightsLike = None,
) -> float:
    """M(s_res/5, s_exp/5, s_rec/5) for scores on the 1–5 scale."""
    return combine([resonation / SCORE_MAX, expression / SCORE_MAX, reception / SCORE_MAX], mode, weights)


def bystander_term(bystander: float) -> float:
    """S_bys/100 − 1 ∈ [−1, 0] (multiplied by ``c_bys`` in the reward)."""
    return float(bystander) / BYSTANDER_MAX - 1.0


def length_excess(num_tokens: int, limit: int = DEFAULT_LENGTH_LIMIT) -> float:
    """max(0, n_tokens − L): the number of tokens over the limit (multiplied by −``c_len``)."""
    return float(max(0, int(num_tokens) - int(limit)))


def perm_reward(
    resonation: float,
    expression: float,
    reception: float,
    bystander: float,
    num_tokens: int = 0,
    *,
    mode: str = "harmonic",
    weights: WeightsLike = None,
    bystander_coef: float = DEFAULT_BYSTANDER_COEF,
    length_coef: float = DEFAULT_LENGTH_COEF,
    length_limit: int = DEFAULT_LENGTH_LIMIT,
) -> float:
    """The full PERM reward R of one output (see the module docstring)."""
    return (
        empathy_term(resonation, expression, reception, mode, weights)
        + bystander_coef * bystander_term(bystander)
        - length_coef * length_excess(num_tokens, length_limit)
    )


# --------------------------------------------------------------------------------------------------
# Tensor versions (broadcasting, differentiable; used by the reward heads and by training losses)
# --------------------------------------------------------------------------------------------------


def combine_tensor(
    values: torch.Tensor, mode: str = "harmonic", weights: WeightsLike = None, eps: float = 1e-12
) -> torch.Tensor:
    """Mean over the last dimension of ``values`` (components in [0, 1]) under ``mode``.

    Computed in the dtype of ``values`` (callers pass fp32).  ``eps`` only guards the division /
    logarithm of exact zeros, which then give ≈0 like the float version.
    """
    w = torch.tensor(_weights(weights, mode, values.shape[-1]), dtype=values.dtype, device=values.device)
    if mode in ("arithmetic", "weighted"):
        return (values * w).sum(-1) / w.sum()
    if mode == "harmonic":
        return w.sum() / (w / values.clamp_min(eps)).sum(-1)
    return torch.exp((w * values.clamp_min(eps).log()).sum(-1) / w.sum())


def perm_reward_tensor(
    resonation: torch.Tensor,
    expression: torch.Tensor,
    reception: torch.Tensor,
    bystander: torch.Tensor,
    num_tokens: torch.Tensor | None = None,
    *,
    mode: str = "harmonic",
    weights: WeightsLike = None,
    bystander_coef: float = DEFAULT_BYSTANDER_COEF,
    length_coef: float = DEFAULT_LENGTH_COEF,
    length_limit: int = DEFAULT_LENGTH_LIMIT,
) -> torch.Tensor:
    """Tensor version of :func:`perm_reward`; ``num_tokens=None`` leaves out the length penalty."""
    empathy = combine_tensor(torch.stack([resonation, expression, reception], -1) / SCORE_MAX, mode, weights)
    reward = empathy + bystander_coef * (bystander / BYSTANDER_MAX - 1.0)
    if num_tokens is not None:
        excess = (num_tokens.to(reward.dtype) - float(length_limit)).clamp_min(0.0)
        reward = reward - length_coef * excess
    return reward
