"""The report of bench/bench_serving.py: the Markdown beside ``serving_<device>.json``.

Every figure is written with its conditions (prompt lengths, new tokens, dtype, eager, versions, the
machine's load) and both ratios of the pair per batch size: against the generator alone in plain vLLM
with every core, and against the generator alone on one core (on 2 cores, the resources each model of
the pair gets).
"""

from __future__ import annotations

import statistics

NAMES = {
    "generator": "generator alone, plain vLLM, every core",
    "generator_1core": "generator alone, plain vLLM, one core",
    "pair_sequential": "FlyThinker pair, plugin default (R then G in each step)",
    "pair_overlap": "FlyThinker pair, FLYTHINKER_VLLM_OVERLAP=1 (R beside G in decode-only steps)",
}
PAIRS = ("pair_sequential", "pair_overlap")


def batch_speed(run: dict, batch: int) -> float | None:
    """Median output tokens/s over the repeats of ``batch`` in one config's run (None: not run)."""
    rows = [row["tokens_per_s"] for row in run.get("batches", []) if row["batch"] == batch]
    return statistics.median(rows) if rows else None


def ratios(configs: dict, batch: int) -> dict[str, dict[str, float]]:
    """Per pair config: its tokens/s over each generator baseline's at ``batch`` (medians of repeats)."""
    out: dict[str, dict[str, float]] = {}
    for pair in PAIRS:
        speed = batch_speed(configs.get(pair, {}), batch)
        if speed is None:
            continue
        for base in ("generator", "generator_1core"):
            base_speed = batch_speed(configs.get(base, {}), batch)
            if base_speed:
                out.setdefault(pair, {})[f"vs_{base}"] = speed / base_speed
    return out


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    configs, batches = result["configs"], result["batch_sizes"]
    lengths = result["prompt_lengths"]
    lines = [
        f"# Serving benchmark ({result['device']})",
        "",
        f"vLLM {result['vllm']} (`{result['vllm_dist']}`), torch {result['torch']}, flythinker-vllm "
        f"{result['flythinker_vllm']}; {result['models']} as generator and reasoner, "
        f"{result['dtype']}, enforce_eager={result['enforce_eager']}; greedy, EOS off, "
        f"{result['new_tokens']} new tokens per request. Prompts: real text ({result['prompt_source']}), "
        f"the same token ids for every config. Batch 1: the {len(lengths['batch_1'])} prompts of "
        f"{lengths['batch_1']} tokens one after the other; batch {max(batches)}: "
        f"{len(lengths['batch_n'])} prompts submitted at once, {min(lengths['batch_n'])}–"
        f"{max(lengths['batch_n'])} tokens (mean {statistics.mean(lengths['batch_n']):.0f}). "
        f"{result['repeats']} repeat(s) of each batch per engine, median shown. Each config is a fresh "
        f"engine in its own process, run in the order {', '.join(configs)}. Load average (1/5/15 min) "
        f"at start {result['load_start']}, at end {result['load_end']}. Total run "
        f"{result['total_s']:.0f} s. Command: `{result['command']}`.",
        "",
        "| config | what | start-up s | cores allowed | torch threads | CPU s / wall s (timed batches) |",
        "|---|---|---|---|---|---|",
    ]
    for name, run in configs.items():
        lines.append(
            f"| {name} | {NAMES.get(name, name)} | {run['startup_s']:.1f} | {run['cpus_allowed']} | "
            f"{run['torch_threads']} | {_fmt(run.get('cpu_per_wall'), '.2f')} |"
        )
    lines += [
        "",
        "CPU s / wall s is the engine process's CPU time over the wall time of the timed batches: at most "
        "1.0 where it is held to one core, up to the number of cores otherwise.",
        "",
        "## Output tokens/s and the pair's ratios",
        "",
        "| batch | "
        + " | ".join(f"{name} tok/s" for name in configs)
        + " | pair / generator (every core) | pair / generator (one core) |",
        "|---" * (len(configs) + 3) + "|",
    ]
    for batch in batches:
        speeds = [_fmt(batch_speed(run, batch)) for run in configs.values()]
        table = ratios(configs, batch)
        cells = []
        for base in ("generator", "generator_1core"):
            parts = [
                f"{pair.removeprefix('pair_')} {table[pair][f'vs_{base}']:.2f}"
                for pair in PAIRS
                if f"vs_{base}" in table.get(pair, {})
            ]
            cells.append(", ".join(parts) or "–")
        lines.append(f"| {batch} | " + " | ".join(speeds) + " | " + " | ".join(cells) + " |")
    check = result.get("tokens_equal")
    if check:
        lines += [""] + [f"- {text}" for text in check]
    rates = {name: run.get("rates") for name, run in configs.items() if run.get("rates")}
    if rates:
        lines += [
            "",
            f"## Poisson request rates ({result['rate_requests']} requests each)",
            "",
            "| config | rate req/s | tok/s | TTFT median s | e2e median s | e2e p90 s |",
            "|---|---|---|---|---|---|",
        ]
        for name, rows in rates.items():
            for row in rows:
                lines.append(
                    f"| {name} | {row['rate_req_s']:g} | {row['tokens_per_s']:.1f} | "
                    f"{row['ttft_median_s']:.3f} | {row['e2e_median_s']:.2f} | {row['e2e_p90_s']:.2f} |"
                )
    lines += [
        "",
        "The pair runs two stacks per token. `pair_sequential` runs the reasoner, then the generator, "
        "in each engine step; `pair_overlap` runs them side by side in decode-only steps (steps holding "
        "a prefill chunk stay sequential; CUDA only: the plugin refuses it on CPU, where vLLM's GEMMs are not "
        "safe on two threads). On 2 cores a reasoner as large as the generator cannot be "
        "hidden behind the generator alone on both cores: the bound of the resources each model gets "
        "is the generator alone on one core, hence the second ratio.",
        "",
    ]
    return "\n".join(lines)
