"""Tables, paired differences, the selection rule applied, and the val-NLL plot of the quality experiment."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .arms import ARMS, CONFIRMATION_RULE, SELECTION_RULE, TUNING_GRID, TUNING_SEED
from .stats import paired_nll, paired_scores

__all__ = ["summarise", "select_default", "markdown", "write_report"]


def _final(run: dict[str, Any], name: str) -> list[list[float]]:
    return [e for e in run["evals"] if e["set"] == name][-1]["records"]


def _nll(records: Sequence[Sequence[float]]) -> float:
    return sum(r[0] for r in records) / sum(r[1] for r in records)


def _per_seed(runs, arm: str, set_name: str) -> dict[int, list[list[float]]]:
    return {r["seed"]: _final(r, set_name) for r in runs if r["arm"] == arm and r["phase"] == "main"}


def _scores(runs, arm: str, metric: str) -> dict[int, list[float]]:
    return {
        r["seed"]: r["generation"][metric]
        for r in runs
        if r["arm"] == arm and r["phase"] == "main" and "generation" in r
    }


def _control_of(arm: str, kind: str) -> str | None:
    for name, candidate in ARMS.items():
        if candidate.control == kind and candidate.controls_arm == arm:
            return name
    return None


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    main = [r for r in runs if r["phase"] == "main"]
    arms = [a for a in ARMS if any(r["arm"] == a for r in main)]
    summary: dict[str, Any] = {"arms": {}, "tuning": {}}
    for r in runs:
        if r["phase"] == "tune":
            summary["tuning"].setdefault(r["arm"], {})[f"{r['learning_rate']:g}"] = _nll(
                _final(r, "user_val")
            )
    for arm in arms:
        mine = [r for r in main if r["arm"] == arm]
        per_seed = [_nll(_final(r, "user_val")) for r in mine]
        temporal = [_nll(_final(r, "temporal_val")) for r in mine]
        entry: dict[str, Any] = {
            "seeds": sorted(r["seed"] for r in mine),
            "learning_rate": mine[0]["learning_rate"],
            "user_val": _mean_std(per_seed),
            "temporal_val": _mean_std(temporal),
            "step0_max_abs_logit_diff": max((r.get("step0_max_abs_logit_diff") or 0.0) for r in mine),
            "trainable_parameters": mine[0].get("trainable_parameters"),
            "curve": _curve(mine),
            "pairs": {},
        }
        references = {"sft": "sft", "donor": _control_of(arm, "donor"), "const": _control_of(arm, "const")}
        if ARMS[arm].overrides.get("reasoner_context"):
            references["sft_noprofile"] = "sft_noprofile"  # what the generator alone does without the profile
        for label, other in references.items():
            if other is None or other == arm or not any(r["arm"] == other for r in main):
                continue
            pair = {
                "user_val": paired_nll(_per_seed(runs, arm, "user_val"), _per_seed(runs, other, "user_val"))
            }
            if label == "sft":
                pair["temporal_val"] = paired_nll(
                    _per_seed(runs, arm, "temporal_val"), _per_seed(runs, other, "temporal_val")
                )
            for metric in ("rougeL", "meteor"):
                a, b = _scores(runs, arm, metric), _scores(runs, other, metric)
                if a and b and set(a) & set(b):
                    pair[metric] = paired_scores(a, b)
            entry["pairs"][label] = {"vs": other, **pair}
        opened = [r["injection"] for r in mine if r.get("injection")]
        if opened:
            entry["injection"] = {
                key: statistics.fmean(o[key] for o in opened) if opened[0][key] is not None else None
                for key in ("tanh_gate", "projection_frobenius")
            } | {"runs": len(opened)}
        gens = [r["generation"] for r in mine if "generation" in r]
        if gens:
            entry["generation"] = {
                m: _mean_std([statistics.fmean(g[m]) for g in gens]) for m in ("rougeL", "meteor")
            }
        summary["arms"][arm] = entry
    summary["selection"] = select_default(summary)
    return summary


def _mean_std(values: Sequence[float]) -> list[float]:
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def _curve(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    steps: dict[int, list[float]] = {}
    for r in runs:
        for e in r["evals"]:
            if e["set"] == "user_val":
                steps.setdefault(e["step"], []).append(_nll(e["records"]))
    return {str(s): statistics.fmean(v) for s, v in sorted(steps.items())}


def _excludes_zero_below(pair: dict[str, float] | None) -> bool:
    return pair is not None and pair["high"] < 0


def select_default(summary: dict[str, Any]) -> dict[str, Any]:
    """Apply :data:`~bench.quality.arms.SELECTION_RULE` (points 3 and 4) to the summary."""
    candidates = [a for a in summary["arms"] if ARMS[a].method == "flythinker" and ARMS[a].control is None]
    helps = []
    for arm in candidates:
        pairs = summary["arms"][arm]["pairs"]
        donor, const, sft = pairs.get("donor"), pairs.get("const"), pairs.get("sft")
        if (
            _excludes_zero_below(donor and donor["user_val"])
            and _excludes_zero_below(const and const["user_val"])
            and sft is not None
            and sft["temporal_val"]["delta"] <= 0
        ):
            helps.append(arm)
    by_nll = sorted(candidates, key=lambda a: summary["arms"][a]["user_val"][0])
    if helps:
        chosen = min(helps, key=lambda a: summary["arms"][a]["user_val"][0])
        reason = "beats its donor and const controls (95 % intervals below zero) and is not worse than SFT on temporal_val"
    else:
        fallback = [
            a
            for a in by_nll
            if summary["arms"][a]["step0_max_abs_logit_diff"] == 0.0
            and "sft" in summary["arms"][a]["pairs"]
            and summary["arms"][a]["pairs"]["sft"]["user_val"]["low"] <= 0
        ]
        chosen = fallback[0] if fallback else None
        reason = (
            "no arm beats both its controls: the lowest-NLL exact-start arm whose user_val difference to SFT "
            "does not lie above zero"
        )
    return {"reasoner_helps": helps, "default": chosen, "reason": reason}


def _fmt(pair: dict[str, float] | None, digits: int = 4) -> str:
    if not pair:
        return "—"
    return f"{pair['delta']:+.{digits}f} [{pair['low']:+.{digits}f}, {pair['high']:+.{digits}f}]"


def _full_reasoner_note(summary: dict[str, Any]) -> str:
    full = [a for a in summary["arms"] if ARMS[a].reasoner_layers == 0]
    return f" (except {', '.join(f'`{a}`' for a in full)}: every layer)" if full else ""


def markdown(report: dict[str, Any]) -> str:
    s, o = report["summary"], report["options"]
    lines = [
        "# Does the reasoner help? Quality experiment (flythinker train's own training path)",
        "",
        f"Report: `{report['command']}`. Each run's exact `flythinker train` command is in the JSON (`runs[i].cli`).",
        "",
        f"- Models: {report.get('description', '')}{_full_reasoner_note(s)}.",
        f"- Budget: {o['steps']} optimizer steps of batch {o['batch_size']} (max length {o['max_length']}, target ≤ "
        f"{o['max_target_tokens']} tokens), AdamW (weight decay 0.025), warm-up 1 %, linear decay, clip 1.0, λ 0.5; "
        f"user_val NLL every {o['eval_every']} steps.",
        f"- Seeds {o['seeds']} (paired: same data order per seed); SFT's learning rate tuned on seed {TUNING_SEED} over "
        f"{list(TUNING_GRID)}.",
        f"- Measured: teacher-forced NLL on all {s.get('n_val', '?')} user_val and {s.get('n_temporal', '?')} temporal_val "
        f"records; greedy generations for {o['gen_requests']} user_val requests × ≤ {o['max_new_tokens']} new tokens.",
        f"- Machine: 2-core CPU, no GPU, torch {report['machine'].get('torch')}, transformers "
        f"{report['machine'].get('transformers')}; each run's wall and CPU seconds and the load average around it "
        "are in the JSON (the machine was shared with other jobs: absolute times are not comparable).",
        "",
        "## Selection rule (committed before the runs)",
        "",
        "```",
        SELECTION_RULE.rstrip(),
        "```",
        "",
        "```",
        CONFIRMATION_RULE.rstrip(),
        "```",
        "",
        f"**Applied:** reasoner helps in {s['selection']['reasoner_helps'] or 'no arm'}; default recipe arm: "
        f"`{s['selection']['default']}` ({s['selection']['reason']}).",
        "",
        f"## Tuning (seed {TUNING_SEED}; final user_val NLL)",
        "",
        "| arm | " + " | ".join(f"lr {lr:g}" for lr in TUNING_GRID) + " |",
        "|---|" + "---|" * len(TUNING_GRID),
    ]
    for arm, rates in s["tuning"].items():
        lines.append(
            f"| {arm} | "
            + " | ".join(f"{rates.get(f'{lr:g}', float('nan')):.4f}" for lr in TUNING_GRID)
            + " |"
        )
    lines += [
        "",
        "## Final NLL (nats/token) and paired differences with 95 % intervals (records × seeds bootstrap)",
        "",
        "Δ = arm − reference; negative = the arm is better.",
        "",
        "| arm | lr | seeds | trainable params | user_val NLL | Δ vs tuned SFT (user_val) | Δ vs its donor | Δ vs its const | "
        "Δ vs SFT (temporal_val) | step-0 max |logit − base| |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, e in s["arms"].items():
        p = e["pairs"]
        lines.append(
            f"| {arm} | {e['learning_rate']:g} | {len(e['seeds'])} | {e['trainable_parameters']:,} | "
            f"{e['user_val'][0]:.4f} ± {e['user_val'][1]:.4f} | {_fmt(p.get('sft', {}).get('user_val'))} | "
            f"{_fmt(p.get('donor', {}).get('user_val'))} | {_fmt(p.get('const', {}).get('user_val'))} | "
            f"{_fmt(p.get('sft', {}).get('temporal_val'))} | {e['step0_max_abs_logit_diff']:.1e} |"
        )
    context = {a: e for a, e in s["arms"].items() if "sft_noprofile" in e["pairs"]}
    if context:
        lines += ["", "## Reasoner context: Δ vs the generator alone without the profile (user_val)", "",
                  "| arm | Δ vs sft_noprofile | Δ vs tuned SFT (with the profile) |", "|---|---|---|"]  # fmt: skip
        for arm, e in context.items():
            lines.append(
                f"| {arm} | {_fmt(e['pairs']['sft_noprofile']['user_val'])} | {_fmt(e['pairs']['sft']['user_val'])} |"
            )
    lines += ["", "## Generation (greedy; ROUGE-L and METEOR in [0, 1]; paired Δ with 95 % intervals)", "",
              "| arm | ROUGE-L | METEOR | ROUGE-L Δ vs SFT | METEOR Δ vs SFT | ROUGE-L Δ vs donor | METEOR Δ vs donor |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for arm, e in s["arms"].items():
        if "generation" not in e:
            continue
        g, p = e["generation"], e["pairs"]
        lines.append(
            f"| {arm} | {g['rougeL'][0]:.4f} ± {g['rougeL'][1]:.4f} | {g['meteor'][0]:.4f} ± {g['meteor'][1]:.4f} | "
            f"{_fmt(p.get('sft', {}).get('rougeL'))} | {_fmt(p.get('sft', {}).get('meteor'))} | "
            f"{_fmt(p.get('donor', {}).get('rougeL'))} | {_fmt(p.get('donor', {}).get('meteor'))} |"
        )
    opened = {a: e["injection"] for a, e in s["arms"].items() if "injection" in e}
    if opened:
        lines += ["", "## How far the injection opened by the end (mean over the runs that recorded it)", "",
                  "| arm | runs | |tanh α| (gate; — = no gate) | ‖W‖_F |", "|---|---|---|---|"]  # fmt: skip
        for arm, o in opened.items():
            gate = "—" if o["tanh_gate"] is None else f"{o['tanh_gate']:.2e}"
            norm = "—" if o["projection_frobenius"] is None else f"{o['projection_frobenius']:.3f}"
            lines.append(f"| {arm} | {o['runs']} | {gate} | {norm} |")
    lines += ["", "## user_val NLL by step (mean over seeds)", ""]
    steps = sorted({int(k) for e in s["arms"].values() for k in e["curve"]})
    lines += ["| arm | " + " | ".join(str(k) for k in steps) + " |", "|---|" + "---|" * len(steps)]
    for arm, e in s["arms"].items():
        lines.append(
            f"| {arm} | " + " | ".join(f"{e['curve'].get(str(k), float('nan')):.4f}" for k in steps) + " |"
        )
    lines += ["", "## Arms", ""]
    for arm in s["arms"]:
        lines.append(f"- `{arm}`: {ARMS[arm].description}.")
    lines += ["", f"![user_val NLL vs step]({report['stem']}_val_nll.png)", ""]
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for arm, e in summary["arms"].items():
        steps = [int(k) for k in e["curve"]]
        ax.plot(steps, list(e["curve"].values()), marker="o", label=arm)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("user_val NLL (nats/token, mean over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    out: Path, stem: str, runs: Sequence[dict[str, Any]], *, options: dict, machine: dict
) -> dict:
    """``<stem>.json`` (every run and the summary), ``<stem>.md`` and ``<stem>_val_nll.png``."""
    from flythinker.train.checkpoints import atomic_write_text

    summary = (
        summarise(runs)
        if any(r["phase"] == "main" for r in runs)
        else {"arms": {}, "tuning": {}, "selection": {}}
    )
    main = [r for r in runs if r["phase"] == "main"]
    if main:
        summary["n_val"] = len(_final(main[0], "user_val"))
        summary["n_temporal"] = len(_final(main[0], "temporal_val"))
    report = {
        "command": "python bench/bench_quality.py " + " ".join(options.get("argv", [])),
        "options": options,
        "machine": machine,
        "stem": stem,
        "description": runs[0].get("description", "") if runs else "",
        "summary": summary,
        "runs": list(runs),
    }
    atomic_write_text(out / f"{stem}.json", json.dumps(report, indent=1))
    if summary["arms"]:
        atomic_write_text(out / f"{stem}.md", markdown(report))
        try:
            plot(summary, out / f"{stem}_val_nll.png")
        except ImportError:
            pass
    return report
