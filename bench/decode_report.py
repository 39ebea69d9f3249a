"""The report of bench/bench_decode.py: the Markdown tables (TTFT, end-to-end and decode-only speed
with paired ratios against each baseline) and issue 12's goals checked against the measured ratios.
"""

from __future__ import annotations


def _ratio_cell(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        return "–"
    low, high = row.get(f"{key}_range", (value, value))
    return f"{value:.2f} ({low:.2f}–{high:.2f})"


GOALS = {  # issue 12's goals, checked in the table's last section
    "end_to_end_b1": 0.95,
    "batch8": 0.9,
}


def markdown(report: dict) -> str:
    settings = report["settings"]
    load0, load1 = settings["load_average_at_start"], settings["load_average_at_end"]
    quiet = "quiet before the run" if load0[0] < 0.5 else "other jobs shared the machine"
    lines = [
        f"# Decode benchmark (CPU) — {report['device']}",
        "",
        f"torch {report['versions']['torch']}, transformers {report['versions']['transformers']}, "
        f"{settings['threads_available']} cores; SmolLM2-135M-Instruct as generator and reasoner (fp32); "
        f"greedy, EOS off; medians of {settings['repeats']} paired interleaved repeats "
        f"(TTFT: {settings['ttft_repeats']}), range in brackets. Baselines (hf_generate, generator, "
        f"sequential) ran with {settings['baseline_threads']} thread(s); threads/processes split the cores "
        f"{settings['thread_split_generator_reasoner']} (generator, reasoner). Load average (1/5/15 min) "
        f"at start {[round(x, 2) for x in load0]}, at end {[round(x, 2) for x in load1]} ({quiet}). "
        f"Command: `{settings.get('command', 'python bench/bench_decode.py')}`.",
        "",
    ]
    if settings.get("reasoner_truncated_to_layers"):
        lines += [
            f"Sections marked *reasoner = first {settings['reasoner_truncated_to_layers']} … layers* decode "
            "with the reasoner cut to the generator's first layers (bench/quality/models.py's "
            "`truncate_layers`, as the quality bench builds it); the generator is the full model.",
            "",
        ]
    loads = settings.get("load_average_before_each_section") or {}
    if loads:
        lines += [
            "Load average (1 min) before each section: "
            + "; ".join(f"{name}: {load[0]:.2f}" for name, load in loads.items())
            + ".",
            "",
        ]
    for section, rows in report["results"].items():
        if section.startswith("TTFT"):
            lines += [
                f"## {section}",
                "",
                "| config | TTFT s | / hf_generate | / generator loop | / sequential |",
                "|---|---|---|---|---|",
            ]
            for name, row in rows.items():
                lines.append(
                    f"| {name} | {row['ttft_s']:.2f} | {_ratio_cell(row, 'ttft_ratio_vs_hf_generate')} | "
                    f"{_ratio_cell(row, 'ttft_ratio_vs_generator')} | {_ratio_cell(row, 'ttft_ratio_vs_sequential')} |"
                )
            lines.append("")
            continue
        lines += [f"## {section}", ""] + decode_table(rows) + [""] + step_windows(rows)
    lines += same_positions(report["results"])
    lines.append(
        "Tokens/s ratios: higher is faster; TTFT ratios are time ratios: lower is faster. Every ratio is "
        "the median of same-repeat pairs. ms/token is the median decode step (hf_generate: the gaps "
        "between its logits-processor calls). End-to-end = new tokens / the whole call's wall time "
        "(prefill included). Which bound applies: with 2 cores the pair gives each model one core, so a "
        "reasoner as large as the generator cannot be hidden behind `generate` on both cores; the bound "
        "of the resources the generator keeps is `generator_core_share` (the generator alone on its "
        "one core), and × it is the fair ratio for a same-size reasoner. A truncated reasoner needs less "
        "than the generator's time per step, so × hf_generate is the one a user sees."
    )
    goals = report.get("goals")
    if goals:
        lines += ["", "| goal (issue 12) | measured | met |", "|---|---|---|"]
        for goal in goals:
            lines.append(f"| {goal['goal']} | {goal['measured']} | {'yes' if goal['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


# (column heading, ratio key): shown when the section measured its base
RATIO_COLUMNS = (
    ("end-to-end × hf_generate", "end_to_end_vs_hf_generate"),
    ("decode × hf_generate", "speed_vs_hf_generate"),
    ("end-to-end × G on its core share", "end_to_end_vs_generator_core_share"),
    ("decode × G on its core share", "speed_vs_generator_core_share"),
    ("× generator loop (e2e)", "end_to_end_vs_generator"),
    ("× sequential (e2e)", "end_to_end_vs_sequential"),
    ("× processes, whole head (e2e)", "end_to_end_vs_processes_whole_head"),
)
WINDOW = 32  # decode steps per column of the step-cost table


def decode_table(rows: dict) -> list[str]:
    """One decode section: speeds, every paired ratio whose base ran, the exact-token check."""
    bases = set(rows)
    columns = [(head, key) for head, key in RATIO_COLUMNS if key.rsplit("_vs_", 1)[1] in bases]
    lines = [
        "| config | TTFT s | ms/token | decode tok/s | end-to-end tok/s | "
        + " | ".join(head for head, _ in columns)
        + " | tokens = sequential |",
        "|---" * (6 + len(columns)) + "|",
    ]
    for name, row in rows.items():
        same = row.get("tokens_equal_sequential")
        cells = [_ratio_cell(row, key) for _, key in columns]
        lines.append(
            f"| {name} | {row['ttft_s']:.2f} | {row['per_token_s'] * 1e3:.1f} | {row['tokens_per_s']:.2f} | "
            f"{row['end_to_end_tokens_per_s']:.2f} | "
            + " | ".join(cells)
            + f" | {'–' if same is None else ('yes' if same else '**no**')} |"
        )
    return lines


def _windows(trace: list[float]) -> list[float]:
    return [sum(trace[i : i + WINDOW]) / len(trace[i : i + WINDOW]) for i in range(0, len(trace), WINDOW)]


def step_windows(rows: dict) -> list[str]:
    """Mean ms per decode step over windows of :data:`WINDOW` steps (per step index, the median over
    repeats): how each config's step cost grows with the position, and where it jumps."""
    traces = {name: row.get("step_ms_median_by_index") or [] for name, row in rows.items()}
    width = max((len(t) for t in traces.values()), default=0)
    if not width:
        return []
    heads = [f"steps {i + 1}–{min(i + WINDOW, width)}" for i in range(0, width, WINDOW)]
    lines = [
        "Step cost by position (mean ms per decode step in each window; per step, the median over repeats):",
        "",
        "| config | " + " | ".join(heads) + " | last / first window |",
        "|---" * (len(heads) + 2) + "|",
    ]
    for name, trace in traces.items():
        if not trace:
            continue
        values = _windows(trace)
        growth = values[-1] / values[0] if values[0] else float("nan")
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + f" | {growth:.2f} |")
    return lines + [""]


def same_positions(results: dict) -> list[str]:
    """For sections that differ only in the number of new tokens: each config's mean step over the
    steps both ran (the same positions). Equal means the longer run is slower per token only because
    its later steps attend to more positions; a higher value in the longer run means something else
    (its cache kind, the run's length itself) made every step slower."""
    groups: dict[str, list[tuple[int, dict]]] = {}
    for section, rows in results.items():
        if not section.startswith("decode") or " new tokens" not in section:
            continue
        head, tail = section.split(" new tokens", 1)
        prefix, count = head.rsplit(", ", 1)
        groups.setdefault(prefix + " … " + tail, []).append((int(count), rows))
    lines = []
    for key, runs in groups.items():
        if len(runs) < 2:
            continue
        runs.sort(key=lambda item: item[0])
        shortest = runs[0][0] - 1  # decode steps of the shortest run
        lines += [
            f"Same positions ({key.replace(' … ', ', N new tokens')}): mean ms per step over the first "
            f"{shortest} decode steps, which every run of the group made:",
            "",
            "| config | " + " | ".join(f"{count} new tokens" for count, _ in runs) + " |",
            "|---" * (len(runs) + 1) + "|",
        ]
        for name in runs[0][1]:
            cells = []
            for _, rows in runs:
                trace = (rows.get(name) or {}).get("step_ms_median_by_index") or []
                part = trace[:shortest]
                cells.append(f"{sum(part) / len(part):.1f}" if part else "–")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def goal_rows(results: dict) -> list[dict]:
    """Issue 12's decode goals against what was measured (processes = the CPU default schedule).
    Ratios are shown to 3 decimals so that a "no" is never displayed as the threshold itself."""
    rows = []

    def add(goal: str, value, met: bool) -> None:
        measured = f"{value:.3f}×" if isinstance(value, float) else str(value)
        rows.append({"goal": goal, "measured": measured, "met": bool(met)})

    for section, configs in results.items():
        proc = configs.get("processes")
        if proc is None:
            continue
        decode = section.startswith("decode")
        batch = section.rsplit("batch ", 1)[-1]
        if (not decode or batch == "1") and "ttft_ratio_vs_sequential" in proc:
            value = proc["ttft_ratio_vs_sequential"]
            add(f"TTFT ≤ sequential's ({section})", value, value <= 1.0)
        if decode and batch == "1" and "end_to_end_vs_hf_generate" in proc:
            value, goal = proc["end_to_end_vs_hf_generate"], GOALS["end_to_end_b1"]
            add(f"end-to-end ≥ {goal}× transformers' generate of G alone ({section})", value, value >= goal)
            bound = proc.get("two_prefill_bound_vs_hf_generate")
            if bound is not None:
                add(
                    f"{goal}× reachable at generate's per-token speed: bound = generate's decode + both "
                    f"models' prefills (sequential's TTFT) ({section})",
                    bound,
                    bound >= goal,
                )
        if decode and batch == "8":
            base = "hf_generate" if "end_to_end_vs_hf_generate" in proc else "generator"
            value = proc.get(f"end_to_end_vs_{base}")
            if value is not None:
                goal = GOALS["batch8"]
                add(f"batch 8 ≥ {goal}× the generator alone ({base}, end to end)", value, value >= goal)
        if "tokens_equal_sequential" in proc:
            same = proc["tokens_equal_sequential"]
            add(f"exact tokens, processes = sequential ({section})", same, same)
    return rows
