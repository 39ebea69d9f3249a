"""Decode benchmark: generator alone vs FlyThinker sequential / threads / processes on CPU.

SmolLM2-135M-Instruct as both models (fp32). Measures, in paired, interleaved repeats (medians):

* time to first token with a long prompt (default 1536 tokens, batch 1), pipelined chunked prefill
  for the concurrent schedules;
* decode tokens/s and median per-token latency after a short prompt (default 128 tokens, greedy,
  EOS off) at batch 1 and 8.

"generator alone" is the same static-cache loop on ``model.generator`` (no reasoner, no fusion).
Writes ``bench/results/decode_cpu.json`` and ``bench/results/decode_cpu.md``.

    python bench/bench_decode.py                # ~8-10 minutes on 2 cores
    python bench/bench_decode.py --quick        # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

CONFIGS = ("generator", "sequential", "threads", "processes")
RESULTS = Path(__file__).resolve().parent / "results"


def prompt_ids(tokenizer, length: int, batch: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Real text (PEP profiles from ../shared/data/peps) tokenized and cut to ``length`` tokens per row."""
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "peps" / "user_val.jsonl"
    rows = []
    with open(data) as handle:
        for i, line in enumerate(handle):
            if len(rows) == batch:
                break
            if i < offset:
                continue
            record = json.loads(line)
            text = json.dumps(record.get("profile", record))[: length * 8]
            ids = tokenizer(text, return_tensors="pt").input_ids[0]
            while ids.numel() < length:
                ids = torch.cat([ids, ids])
            rows.append(ids[:length])
    ids = torch.stack(rows)
    return ids, torch.ones_like(ids)


@torch.no_grad()
def generator_alone(model, input_ids, attention_mask, max_new_tokens: int) -> dict:
    """The generator's own static-cache greedy loop (LM head on the last position only)."""
    from transformers import StaticCache

    generator = model.generator
    batch, length = input_ids.shape
    mask = torch.cat([attention_mask, attention_mask.new_ones(batch, max_new_tokens)], dim=1)
    positions = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    cache = StaticCache(config=generator.config, max_cache_len=length + max_new_tokens)

    def forward(ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        kwargs = dict(attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return generator(input_ids=ids, position_ids=position_ids, **kwargs).logits[:, -1]

    begin = time.perf_counter()
    token = forward(input_ids, positions).argmax(-1)
    first = time.perf_counter()
    position, steps = positions[:, -1:], []
    for _ in range(max_new_tokens - 1):
        tick = time.perf_counter()
        position = position + 1
        token = forward(token[:, None], position).argmax(-1)
        steps.append(time.perf_counter() - tick)
    end = time.perf_counter()
    return {
        "ttft_s": first - begin,
        "per_token_s": statistics.median(steps) if steps else 0.0,
        "tokens_per_s": len(steps) / (end - first) if steps else 0.0,
    }


def flythinker_run(model, schedule, input_ids, attention_mask, max_new_tokens, threads) -> dict:
    from flythinker.decoding import generate

    out = generate(
        model,
        input_ids,
        attention_mask,
        schedule=schedule,
        max_new_tokens=max_new_tokens,
        eos_token_id=(),
        pad_token_id=0,
        threads=threads,
    )
    t = out.timings
    return {
        "ttft_s": t.time_to_first_token_s,
        "per_token_s": t.per_token_s,
        "tokens_per_s": t.tokens_per_s,
        "prefill_chunk": out.settings.prefill_chunk,
    }


BASELINE_THREADS: int | None = None  # --baseline-threads (None = torch's default, all cores)


def run_config(name, model, input_ids, attention_mask, max_new_tokens, threads) -> dict:
    if name not in ("generator", "sequential"):  # the engine splits the cores itself
        return flythinker_run(model, name, input_ids, attention_mask, max_new_tokens, threads)
    saved = torch.get_num_threads()
    if BASELINE_THREADS is not None:
        torch.set_num_threads(BASELINE_THREADS)
    try:
        if name == "generator":
            return generator_alone(model, input_ids, attention_mask, max_new_tokens)
        return flythinker_run(model, name, input_ids, attention_mask, max_new_tokens, threads)
    finally:
        torch.set_num_threads(saved)


def paired(model, input_ids, attention_mask, max_new_tokens, repeats, threads, configs, label) -> dict:
    """Interleaved repeats (rotating order); per-config medians and per-repeat paired ratios."""
    runs = {name: [] for name in configs}
    for r in range(repeats):
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        for name in order:
            runs[name].append(run_config(name, model, input_ids, attention_mask, max_new_tokens, threads))
        print(
            f"  [{label}] repeat {r + 1}/{repeats}: "
            + ", ".join(
                f"{n} {runs[n][-1]['per_token_s'] * 1e3:.0f} ms/tok ttft {runs[n][-1]['ttft_s']:.2f}s"
                for n in configs
            ),
            flush=True,
        )
    summary = {}
    for name in configs:
        summary[name] = {
            key: statistics.median(run[key] for run in runs[name])
            for key in ("ttft_s", "per_token_s", "tokens_per_s")
        }
        summary[name]["runs"] = runs[name]
    for name in configs:  # paired ratios: median over repeats of the same-repeat ratio
        for base in ("generator", "sequential"):
            if base in configs and name != base:
                summary[name][f"speed_vs_{base}"] = statistics.median(
                    runs[name][i]["tokens_per_s"] / runs[base][i]["tokens_per_s"] for i in range(repeats)
                )
                summary[name][f"ttft_ratio_vs_{base}"] = statistics.median(
                    runs[name][i]["ttft_s"] / runs[base][i]["ttft_s"] for i in range(repeats)
                )
    return summary


def markdown(report: dict) -> str:
    lines = [
        f"# Decode benchmark (CPU) — {report['device']}",
        "",
        f"torch {report['versions']['torch']}, transformers {report['versions']['transformers']}, "
        f"{report['settings']['threads_available']} cores; SmolLM2-135M-Instruct as generator and reasoner (fp32); "
        f"greedy, EOS off; medians of {report['settings']['repeats']} paired interleaved repeats "
        f"(TTFT: {report['settings']['ttft_repeats']}). Baselines (generator, sequential) ran with "
        f"{report['settings']['baseline_threads']} thread(s); threads/processes split the cores "
        f"{report['settings']['thread_split_generator_reasoner']} (generator, reasoner). Load average "
        f"(1/5/15 min) at start {report['settings']['load_average_at_start']}, at end "
        f"{report['settings']['load_average_at_end']} (other jobs shared the machine).",
        "",
    ]
    for section, rows in report["results"].items():
        if section.startswith("TTFT"):
            lines += [
                f"## {section}",
                "",
                "| config | TTFT s | TTFT / generator alone | TTFT / sequential |",
                "|---|---|---|---|",
            ]
            for name, row in rows.items():
                lines.append(
                    f"| {name} | {row['ttft_s']:.2f} | {row.get('ttft_ratio_vs_generator', 1.0):.2f} | "
                    f"{row.get('ttft_ratio_vs_sequential', 1.0 if name == 'sequential' else float('nan')):.2f} |"
                )
            lines.append("")
            continue
        lines += [
            f"## {section}",
            "",
            "| config | TTFT s | ms/token | tokens/s | × generator alone | × sequential |",
            "|---|---|---|---|---|---|",
        ]
        for name, row in rows.items():
            lines.append(
                f"| {name} | {row['ttft_s']:.2f} | {row['per_token_s'] * 1e3:.1f} | {row['tokens_per_s']:.2f} | "
                f"{row.get('speed_vs_generator', 1.0):.2f} | {row.get('speed_vs_sequential', 1.0 if name == 'sequential' else float('nan')):.2f} |"
            )
        lines.append("")
    lines.append(
        "Decode ratios are tokens/s ratios (higher is faster), TTFT ratios are time ratios (lower is "
        "faster); both are medians of same-repeat pairs. ms/token is the median decode step."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--long-prompt", type=int, default=1536)
    parser.add_argument("--short-prompt", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ttft-repeats", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument(
        "--baseline-threads",
        type=int,
        default=None,
        help="threads for 'generator' and 'sequential' (default: all cores; 1 helps on a loaded machine)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS / "decode_cpu.json",
        help="results file (.json; a .md table is written beside it) or a folder",
    )
    args = parser.parse_args()
    if args.out.is_dir():  # a results folder: use the default file name inside it
        args.out = args.out / "decode_cpu.json"
    if args.quick:
        args.long_prompt, args.short_prompt, args.new_tokens, args.batches = 256, 32, 8, [1, 2]
        args.repeats, args.ttft_repeats = 1, 1

    import transformers
    from transformers import AutoTokenizer

    from flythinker import FlyThinkerForCausalLM
    from flythinker.decoding import CPU_CONCURRENT_DEFAULT, shutdown_workers
    from flythinker.decoding.settings import default_cpu_threads
    from flythinker.modeling.smollm import fix_end_of_turn, smollm2_path

    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    fix_end_of_turn(tokenizer)
    model = FlyThinkerForCausalLM.from_components(
        generator=str(path), reasoner=str(path), dtype=torch.float32
    ).eval()
    global BASELINE_THREADS
    BASELINE_THREADS = args.baseline_threads
    load_at_start = list(os.getloadavg())
    cores = default_cpu_threads()
    threads = (max(1, cores - cores // 2), max(1, cores // 2))
    configs = list(args.configs)

    print("warm-up (starts the reasoner worker process)", flush=True)
    ids, mask = prompt_ids(tokenizer, 16, 1)
    for name in configs:
        run_config(name, model, ids, mask, 4, threads)

    results = {}
    ids, mask = prompt_ids(tokenizer, args.long_prompt, 1)
    print(f"time to first token, {args.long_prompt}-token prompt, batch 1", flush=True)
    results[f"TTFT, {args.long_prompt}-token prompt, batch 1"] = paired(
        model, ids, mask, 2, args.ttft_repeats, threads, configs, "ttft"
    )
    for batch in args.batches:
        ids, mask = prompt_ids(tokenizer, args.short_prompt, batch)
        label = f"decode, {args.short_prompt}-token prompt, {args.new_tokens} new tokens, batch {batch}"
        print(label, flush=True)
        results[label] = paired(
            model, ids, mask, args.new_tokens, args.repeats, threads, configs, f"b{batch}"
        )
    shutdown_workers()

    report = {
        "device": f"CPU ({platform.processor() or platform.machine()}), {cores} cores",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "settings": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "threads_available": cores,
            "thread_split_generator_reasoner": threads,
            "cpu_concurrent_default": CPU_CONCURRENT_DEFAULT,
            "dtype": "float32",
            "model": "SmolLM2-135M-Instruct (generator and reasoner)",
            "baseline_threads": args.baseline_threads or torch.get_num_threads(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": list(os.getloadavg()),
        },
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
