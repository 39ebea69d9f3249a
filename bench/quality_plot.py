"""Plot of bench_quality.py's results: user_val NLL vs optimizer step, one line per variant.

Left: each line is the mean over seeds of the teacher-forced val NLL at the evaluated steps; the band
is ± 1 standard deviation over seeds (absent with one seed). Right: the paired difference to SFT
(variant − SFT, same seed), mean ± std over seeds, for the variants that stay within 0.1 nats of it —
the closed starts lie on top of SFT on the left. matplotlib is imported inside the
function (a dev extra), with the non-interactive Agg backend.

    python bench/quality_plot.py bench/results/quality_cpu.json   # redraw the PNG next to the JSON
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def val_curves(
    runs: Sequence[dict[str, Any]], order: Sequence[str]
) -> dict[str, tuple[list[int], list[float], list[float]]]:
    """``{variant: (steps, mean NLL, std NLL)}`` over the seeds that evaluated each step."""
    curves = {}
    for variant in order:
        per_step: dict[int, list[float]] = {}
        for run in runs:
            if run["variant"] == variant:
                for point in run["val"]:
                    per_step.setdefault(point["step"], []).append(point["nll"])
        if not per_step:
            continue
        steps = sorted(per_step)
        means = [statistics.fmean(per_step[s]) for s in steps]
        stds = [statistics.stdev(per_step[s]) if len(per_step[s]) > 1 else 0.0 for s in steps]
        curves[variant] = (steps, means, stds)
    return curves


def paired_deltas(
    runs: Sequence[dict[str, Any]], order: Sequence[str]
) -> dict[str, tuple[list[int], list[float], list[float]]]:
    """``{variant: (steps, mean Δ, std Δ)}`` of variant − SFT per seed at the steps both evaluated."""
    sft = {(r["seed"], p["step"]): p["nll"] for r in runs if r["variant"] == "sft" for p in r["val"]}
    deltas = {}
    for variant in order:
        per_step: dict[int, list[float]] = {}
        for run in runs:
            if run["variant"] == variant and variant != "sft":
                for point in run["val"]:
                    if (run["seed"], point["step"]) in sft:
                        per_step.setdefault(point["step"], []).append(
                            point["nll"] - sft[(run["seed"], point["step"])]
                        )
        if per_step:
            steps = sorted(per_step)
            means = [statistics.fmean(per_step[s]) for s in steps]
            stds = [statistics.stdev(per_step[s]) if len(per_step[s]) > 1 else 0.0 for s in steps]
            deltas[variant] = (steps, means, stds)
    return deltas


def _band(ax, steps, means, stds, **style):
    (line,) = ax.plot(steps, means, marker="o", markersize=3, **style)
    ax.fill_between(
        steps,
        [m - s for m, s in zip(means, stds)],
        [m + s for m, s in zip(means, stds)],
        color=line.get_color(),
        alpha=0.15,
        linewidth=0,
    )
    return line


def plot_val_nll(
    runs: Sequence[dict[str, Any]], order: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Write the PNG to ``path`` and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_delta) = plt.subplots(1, 2, figsize=(13, 5), dpi=120)
    colors = {}
    for variant, (steps, means, stds) in val_curves(runs, order).items():
        style = {"color": "black", "linewidth": 2.2} if variant == "sft" else {"linewidth": 1.5}
        colors[variant] = _band(ax, steps, means, stds, label=variant, **style).get_color()
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("user_val NLL (nats / target token)")
    ax.set_title(title or "user_val NLL vs step (mean over seeds, ±1 std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax_delta.axhline(0.0, color="black", linewidth=2.2, label="sft")
    for variant, (steps, means, stds) in paired_deltas(runs, order).items():
        if max(abs(m) for m in means) < 0.1:
            _band(ax_delta, steps, means, stds, label=variant, color=colors.get(variant), linewidth=1.5)
    ax_delta.set_xlabel("optimizer step")
    ax_delta.set_ylabel("paired Δ val NLL vs SFT (nats / token; < 0 = better)")
    ax_delta.set_title("variants within 0.1 nats of SFT")
    ax_delta.grid(alpha=0.3)
    ax_delta.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    source = Path(sys.argv[1])
    report = json.loads(source.read_text())
    target = source.with_name(source.stem + "_val_nll.png")
    print(plot_val_nll(report["runs"], report["variant_order"], target))
