"""Comparison helper that says how many elements mismatch and where (NaN / inf counted separately)."""

from __future__ import annotations

import torch

# per-dtype tolerances (atol, rtol) for a result compared against the float64 reference evaluated on
# the same (upcast) inputs: only the final rounding to the output dtype and fp32 statistics differ.
TOL = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (3e-2, 2e-2),
}


def mismatch_report(
    actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, max_show: int = 8
) -> str:
    """Empty string when ``actual`` matches ``expected``; otherwise a description of the mismatches."""
    if tuple(actual.shape) != tuple(expected.shape):
        return f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    a_nan, e_nan = torch.isnan(a), torch.isnan(e)
    a_inf, e_inf = torch.isinf(a), torch.isinf(e)
    finite = ~(a_nan | e_nan | a_inf | e_inf)
    bad_nan = a_nan != e_nan
    bad_inf = (a_inf | e_inf) & ~(a_inf & e_inf & (torch.sign(a) == torch.sign(e)))
    bad_val = finite & ((a - e).abs() > atol + rtol * e.abs())
    bad = bad_nan | bad_inf | bad_val
    n_bad = int(bad.sum())
    if n_bad == 0:
        return ""
    idx = bad.nonzero()[:max_show].tolist()
    where = ", ".join(f"{tuple(i)}: {a[tuple(i)].item():.6g} vs {e[tuple(i)].item():.6g}" for i in idx)
    err = (a - e)[finite].abs()
    return (
        f"{n_bad}/{bad.numel()} elements mismatch (atol={atol}, rtol={rtol}): {int(bad_nan.sum())} NaN, "
        f"{int(bad_inf.sum())} inf, {int(bad_val.sum())} values; max finite |diff| = "
        f"{(err.max().item() if err.numel() else float('nan')):.3g}; first: {where}"
    )


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, name: str = ""
) -> None:
    report = mismatch_report(actual, expected, atol, rtol)
    assert not report, f"{name}: {report}"
