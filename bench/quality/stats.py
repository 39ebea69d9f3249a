"""Paired differences with bootstrap intervals over records and seeds.

For two arms measured on the same seeds ``s`` (same data order) and the same records ``r``:

* NLL: ``Δ = Σ_{s,r} (nll^A_{s,r} − nll^B_{s,r}) / Σ_{s,r} tokens_r`` (nats per target token;
  ``tokens_r`` is the same for both arms). Negative = A is better.
* a per-request score (ROUGE-L, METEOR): ``Δ = mean_{s,r} (x^A_{s,r} − x^B_{s,r})``.

The interval resamples seeds and records independently with replacement (a two-way bootstrap:
the seed set and the record set are both samples) and recomputes Δ on the resampled grid; the 95 %
interval is the 2.5th and 97.5th percentiles of ``n_resamples`` values (a fixed RNG, so reports
reproduce).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["paired_nll", "paired_scores", "two_way_bootstrap"]


def two_way_bootstrap(
    diff: np.ndarray, weight: np.ndarray, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """``(Δ, low, high)`` for ``Δ = Σ diff / Σ weight`` over a [seeds, records] grid (weights broadcast)."""
    diff = np.asarray(diff, dtype=np.float64)
    weight = np.broadcast_to(np.asarray(weight, dtype=np.float64), diff.shape)
    if diff.ndim != 2 or diff.size == 0:
        raise ValueError(f"need a non-empty [seeds, records] grid, got shape {diff.shape}")
    point = float(diff.sum() / weight.sum())
    rng = np.random.default_rng(seed)
    n_seeds, n_records = diff.shape
    values = np.empty(n_resamples)
    for k in range(n_resamples):
        s = rng.integers(0, n_seeds, n_seeds)
        r = rng.integers(0, n_records, n_records)
        values[k] = diff[np.ix_(s, r)].sum() / weight[np.ix_(s, r)].sum()
    low, high = np.percentile(values, [2.5, 97.5])
    return point, float(low), float(high)


def paired_nll(
    a: dict[int, Sequence[Sequence[float]]], b: dict[int, Sequence[Sequence[float]]], **kwargs
) -> dict[str, float]:
    """Paired NLL difference A − B from ``{seed: [[nll_r, tokens_r], …]}`` per arm (common seeds only)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("no common seeds to pair")
    diff = np.array([[ra[0] - rb[0] for ra, rb in zip(a[s], b[s], strict=True)] for s in seeds])
    tokens = np.array([[ra[1] for ra in a[s]] for s in seeds])
    other = np.array([[rb[1] for rb in b[s]] for s in seeds])
    if not np.array_equal(tokens, other):
        raise ValueError("the two arms were measured on different target tokens; they cannot be paired")
    point, low, high = two_way_bootstrap(diff, tokens, **kwargs)
    return {"delta": point, "low": low, "high": high, "seeds": len(seeds), "records": diff.shape[1]}


def paired_scores(a: dict[int, Sequence[float]], b: dict[int, Sequence[float]], **kwargs) -> dict[str, float]:
    """Paired difference of a per-request score A − B from ``{seed: [x_r, …]}`` per arm."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("no common seeds to pair")
    diff = np.array([[xa - xb for xa, xb in zip(a[s], b[s], strict=True)] for s in seeds])
    point, low, high = two_way_bootstrap(diff, np.ones_like(diff), **kwargs)
    return {"delta": point, "low": low, "high": high, "seeds": len(seeds), "records": diff.shape[1]}
