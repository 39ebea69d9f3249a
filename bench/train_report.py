"""The report half of bench/bench_train.py: per-variant summaries, paired ratios, the floor, the
machine's environment, and the JSON + Markdown result files (``write_results``).

Statistics are medians over the measured rounds; ratios are paired per round (same round, same
weights) before the median is taken, so machine noise common to a round cancels.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers


# ----------------------------------------------------------------------------------------- summary
def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _paired_ratios(
    samples: Mapping[str, list[dict]],
    num: str,
    den: Sequence[str],
    key_num: str = "step_s",
    key_den: Sequence[str] | None = None,
) -> list[float]:
    """Per round where all variants ran: ``num[key] / sum(den[key])`` (in round order)."""
    key_den = key_den or [key_num] * len(den)
    by_round = {name: {s["round"]: s for s in samples.get(name, [])} for name in [num, *den]}
    common = set(by_round[num])
    for name in den:
        common &= set(by_round[name])
    return [
        by_round[num][r][key_num] / sum(by_round[n][r][k] for n, k in zip(den, key_den))
        for r in sorted(common)
    ]


def _floor_ratios(samples: Mapping[str, list[dict]]) -> dict[str, Any]:
    """FlyThinker's step against its floor, three ways, each as paired per-round ratios with their spread:

    * ``fwd_bwd``: forward + backward of FlyThinker / (SFT's + the reasoner's forward + backward);
    * ``step``: the whole step (AdamW over both models) / (SFT's step + the reasoner's forward,
      backward and AdamW update) — equal work on both sides;
    * ``step_vs_issue_floor``: the whole step / (SFT's step + the reasoner's forward + backward only),
      issue 12's floor as written (the reasoner's AdamW update counts on one side only).
    """
    fly, den = "flythinker_padded", ["sft", "reasoner_fwd_bwd"]
    definitions = {
        "fwd_bwd": ("fwd_bwd_s", ["fwd_bwd_s", "fwd_bwd_s"]),
        "step": ("step_s", ["step_s", "step_s"]),
        "step_vs_issue_floor": ("step_s", ["step_s", "fwd_bwd_s"]),
    }
    out: dict[str, Any] = {}
    for name, (key_num, key_den) in definitions.items():
        ratios = _paired_ratios(samples, fly, den, key_num, key_den)
        out[name] = {
            "median": _median(ratios),
            "min": min(ratios) if ratios else None,
            "max": max(ratios) if ratios else None,
            "quartiles": statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) >= 2 else None,
            "rounds": [round(r, 4) for r in ratios],
        }
    return out


def summarize(variants: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
    """Medians per variant and the benchmark's ratios (``None`` where a variant did not run)."""
    samples, memory = result["samples"], result["memory"]
    per: dict[str, dict[str, Any]] = {}
    for name, variant in variants.items():
        rows = samples.get(name, [])
        med = {
            k: _median([s[k] for s in rows])
            for k in ("forward_s", "backward_s", "optimizer_s", "fwd_bwd_s", "step_s")
        }
        per[name] = {
            "steps": len(rows),
            **{f"median_{k}": v for k, v in med.items()},
            "real_tokens": variant.real_tokens,
            "rows": variant.rows,
            "width": variant.width,
            "token_slots": variant.rows * variant.width,
            "pad_fraction": 1 - variant.real_tokens / (variant.rows * variant.width),
            "real_tokens_per_s": _ratio(variant.real_tokens, med["step_s"]),
            "memory": memory.get(name),
            "losses": [s["loss"] for s in rows],
            "warmup_loss": result["warmup"][name][0]["loss"] if result["warmup"].get(name) else None,
            "warmup_step_s": [s["step_s"] for s in result["warmup"].get(name, [])],
            "step_s_samples": [s["step_s"] for s in rows],
        }

    def mem(name: str, key: str = "peak_bytes") -> float | None:
        return (per[name]["memory"] or {}).get(key)

    t = {n: per[n]["median_step_s"] for n in per}
    t_r = per["reasoner_fwd_bwd"]["median_fwd_bwd_s"]
    t_r_opt = per["reasoner_fwd_bwd"]["median_optimizer_s"]
    ratios = {
        "throughput_padded_vs_reference": _ratio(
            per["flythinker_padded"]["real_tokens_per_s"], per["reference"]["real_tokens_per_s"]
        ),
        "throughput_packed_vs_reference": _ratio(
            per["flythinker_packed"]["real_tokens_per_s"], per["reference"]["real_tokens_per_s"]
        ),
        "throughput_padded_vs_reference_paired": _ratio(
            1.0, _median(_paired_ratios(samples, "flythinker_padded", ["reference"]))
        ),
        "peak_memory_padded_vs_reference": _ratio(mem("flythinker_padded"), mem("reference")),
        "peak_memory_packed_vs_reference": _ratio(mem("flythinker_packed"), mem("reference")),
        "step_memory_padded_vs_reference": _ratio(
            mem("flythinker_padded", "peak_above_start_bytes"), mem("reference", "peak_above_start_bytes")
        ),
        "step_memory_packed_vs_reference": _ratio(
            mem("flythinker_packed", "peak_above_start_bytes"), mem("reference", "peak_above_start_bytes")
        ),
        "flythinker_over_sft_plus_reasoner": _ratio(
            t["flythinker_padded"], None if t["sft"] is None or t_r is None else t["sft"] + t_r
        ),
        "flythinker_over_sft_plus_reasoner_paired": _median(
            _paired_ratios(
                samples, "flythinker_padded", ["sft", "reasoner_fwd_bwd"], "step_s", ["step_s", "fwd_bwd_s"]
            )
        ),
        "flythinker_over_sft_plus_reasoner_incl_its_optimizer": _ratio(
            t["flythinker_padded"], None if None in (t["sft"], t_r, t_r_opt) else t["sft"] + t_r + t_r_opt
        ),
        "flythinker_over_sft": _ratio(t["flythinker_padded"], t["sft"]),
    }
    floor = None
    if samples.get("flythinker_padded") and samples.get("sft") and samples.get("reasoner_fwd_bwd"):
        floor = _floor_ratios(samples)
    return {
        "variants": per,
        "ratios": ratios,
        "floor": floor,
        "targets": {
            "throughput_vs_reference": ">= 1.5",
            "peak_memory_vs_reference": "<= 0.7",
            "flythinker_over_sft_plus_reasoner": "<= 1.03",
        },
    }


# -------------------------------------------------------------------------------------- reporting
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "device": str(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    else:
        env["device_name"] = f"CPU ({env['cpu_model']}, {env['cpu_count']} cores)"
    return env


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def _spread(samples: Sequence[float]) -> str:
    return f"{min(samples):.2f}–{max(samples):.2f}" if samples else "–"


def _noise_notes(per: Mapping[str, Mapping[str, Any]], ratios: Mapping[str, Any]) -> list[str]:
    """Plain-language warnings derived from the numbers themselves (no thresholds tuned to a run)."""
    notes = []
    over_sft = ratios.get("flythinker_over_sft")
    if over_sft is not None and over_sft < 1:
        notes.append(
            f"t_flythinker < t_sft ({over_sft:.2f}×) is impossible for equal work (FlyThinker runs SFT's "
            "generator plus a reasoner): the step times are dominated by other processes' load, so the "
            "FlyThinker/(SFT+reasoner) ratio of this run does not resolve the ≤ 1.03 target."
        )
    for name, v in per.items():
        samples = v.get("step_s_samples") or []
        if len(samples) >= 2 and max(samples) > 1.5 * min(samples):
            notes.append(f"{name}: step times vary {min(samples):.1f}–{max(samples):.1f} s across rounds.")
    return notes


def markdown(report: Mapping[str, Any]) -> str:
    """A short markdown summary of ``report`` (the JSON written next to it)."""
    env, settings, summary = report["environment"], report["settings"], report["summary"]
    per, ratios = summary["variants"], summary["ratios"]
    lines = [
        f"# Training-step benchmark — {env['device_name']}",
        "",
        f"torch {env['torch']}, transformers {env['transformers']}, {env['torch_threads']} threads; "
        f"SmolLM2-135M-Instruct as generator and reasoner ({settings['dtype']}); {settings['records']} PEP "
        f"record(s) per step from offset {settings['offset']}; ours: max_length {settings['max_length']}, "
        f"max_target_tokens {settings['max_target_tokens']}; reference rows {settings['reference_row_length']} "
        f"tokens. Medians of {settings['repeats']} interleaved steps ({settings['reference_repeats']} for the "
        f"reference) after {settings['warmup']} warm-up round(s). Memory: {settings['memory_method']}. "
        f"Host allocator: {settings.get('host_allocator', 'default')}.",
        "",
    ]
    if report.get("load_average"):
        load = report["load_average"]
        lines += [
            f"Load average (1/5/15 min) before {load['before']}, after {load['after']}: "
            f"{report.get('note', '')}",
            "",
        ]
    lines += [
        "| variant | rows × width | pad % | step s (min–max) | fwd+bwd s | optimizer s | real tok/s | peak MiB | "
        "step MiB | loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in per.items():
        m = v["memory"] or {}
        peak = m.get("peak_bytes")
        step = m.get("peak_above_start_bytes")
        loss = v["losses"][0] if v["losses"] else v["warmup_loss"]
        lines.append(
            f"| {name} | {v['rows']} × {v['width']} | {100 * v['pad_fraction']:.0f} | {_fmt(v['median_step_s'])} "
            f"({_spread(v.get('step_s_samples', []))}) | "
            f"{_fmt(v['median_fwd_bwd_s'])} | {_fmt(v['median_optimizer_s'])} | {_fmt(v['real_tokens_per_s'], '.1f')} | "
            f"{_fmt(None if peak is None else peak / 2**20, ',.0f')} | "
            f"{_fmt(None if step is None else step / 2**20, ',.0f')} | {_fmt(loss, '.4f')} |"
        )
    lines += [
        "",
        "| ratio | measured | target |",
        "|---|---|---|",
        f"| throughput, padded / reference | {_fmt(ratios['throughput_padded_vs_reference'])}× "
        f"(paired {_fmt(ratios['throughput_padded_vs_reference_paired'])}×) | ≥ 1.5× |",
        f"| throughput, packed / reference | {_fmt(ratios['throughput_packed_vs_reference'])}× | ≥ 1.5× |",
        f"| peak memory, padded / reference | {_fmt(ratios['peak_memory_padded_vs_reference'])}× "
        f"(step-only {_fmt(ratios['step_memory_padded_vs_reference'])}×) | ≤ 0.7× |",
        f"| peak memory, packed / reference | {_fmt(ratios['peak_memory_packed_vs_reference'])}× "
        f"(step-only {_fmt(ratios['step_memory_packed_vs_reference'])}×) | ≤ 0.7× |",
        f"| t_flythinker / (t_sft + t_reasoner_fwd_bwd) | {_fmt(ratios['flythinker_over_sft_plus_reasoner'], '.3f')} "
        f"(paired {_fmt(ratios['flythinker_over_sft_plus_reasoner_paired'], '.3f')}; with the reasoner's AdamW "
        f"update {_fmt(ratios['flythinker_over_sft_plus_reasoner_incl_its_optimizer'], '.3f')}) | ≤ 1.03 |",
        f"| t_flythinker / t_sft | {_fmt(ratios['flythinker_over_sft'])} | – |",
    ]
    floor = summary.get("floor")
    if floor:
        labels = {
            "fwd_bwd": "forward + backward / (SFT's + the reasoner's forward + backward)",
            "step": "whole step / (SFT step + reasoner forward, backward and AdamW): equal work",
            "step_vs_issue_floor": "whole step / (SFT step + reasoner forward + backward): issue 12 as written",
        }
        lines += [
            "",
            f"Against the floor, paired per round ({len(floor['fwd_bwd']['rounds'])} rounds; goal ≤ 1.03):",
            "",
            "| ratio | median | quartiles | min–max | ≤ 1.03 |",
            "|---|---|---|---|---|",
        ]
        for key, label in labels.items():
            f = floor[key]
            quartiles = "–" if not f["quartiles"] else f"{f['quartiles'][0]:.3f}–{f['quartiles'][2]:.3f}"
            lines.append(
                f"| {label} | {_fmt(f['median'], '.3f')} | {quartiles} | {_fmt(f['min'], '.3f')}–"
                f"{_fmt(f['max'], '.3f')} | {'yes' if f['median'] is not None and f['median'] <= 1.03 else 'no'} |"
            )
    noise = _noise_notes(per, ratios)
    if noise:
        lines += [""] + [f"* **Caveat:** {n}" for n in noise]
    if report.get("subprocess_memory"):
        lines += [
            "",
            "Fresh-process peak RSS (one step per child after loading and AdamW state allocation):",
            "",
            "| variant | peak RSS MiB | RSS increase during the step MiB |",
            "|---|---|---|",
        ]
        for name, m in report["subprocess_memory"].items():
            lines.append(
                f"| {name} | {m['peak_rss_bytes'] / 2**20:,.0f} | {m['rss_increase_bytes'] / 2**20:,.0f} |"
            )
    if report.get("notes"):
        lines += [""] + [f"* {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def write_results(report: Mapping[str, Any], out: str | os.PathLike, stem: str) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


# ------------------------------------------------------------------------------------------- main
