"""KV cache benchmark: transformers' ``DynamicCache`` vs :class:`~flythinker.decoding.reserved_cache.ReservedCache`.

``DynamicCache`` concatenates every layer's keys and values at every decode step (a copy of the whole
cache); ``ReservedCache`` writes the new position into storage reserved for the call. Both hold the
same numbers, so each step's logits are compared bit for bit.

SmolLM2-135M-Instruct (fp32), one thread (the generator's share under ``processes`` on 2 cores).
Per grid point (batch B, prompt length T): both caches are prefilled with the same random prompt,
then decode steps alternate between them (the order flips every step) on the same tokens, so the
machine's drift hits both alike; the speed-up is the median of the per-step time ratios
dynamic / reserved, with quartiles. This decides ``RESERVED_CACHE_FROM`` in
``flythinker/decoding/steps.py``.

    python bench/bench_kv_cache.py                 # ~8 minutes on 2 cores
    python bench/bench_kv_cache.py --quick
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

RESULTS = Path(__file__).resolve().parent / "results"
GRID = ((1, 128), (1, 256), (1, 512), (1, 1536), (8, 128), (8, 512))


def paired_steps(model, batch: int, prompt: int, steps: int, seed: int = 0) -> dict:
    """Decode ``steps`` tokens on both caches, alternating per step; per-step times and ratios."""
    from transformers import DynamicCache

    from flythinker.decoding.reserved_cache import ReservedCache

    decoder, head = model.get_decoder(), model.get_output_embeddings()
    ids = torch.randint(
        0, model.config.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(seed)
    )
    caches = {
        "dynamic": DynamicCache(config=model.config),
        "reserved": ReservedCache(model.config, prompt + steps),
    }
    times: dict[str, list[float]] = {name: [] for name in caches}
    equal = True
    with torch.no_grad():
        for cache in caches.values():
            decoder(input_ids=ids, past_key_values=cache, use_cache=True)
        token = torch.zeros(batch, 1, dtype=torch.long)
        for i in range(steps):
            positions = torch.full((batch, 1), prompt + i)
            logits = {}
            for name in list(caches) if i % 2 == 0 else list(caches)[::-1]:
                begin = time.perf_counter()
                hidden = decoder(
                    input_ids=token, position_ids=positions, past_key_values=caches[name], use_cache=True
                ).last_hidden_state
                logits[name] = head(hidden[:, -1])
                times[name].append(time.perf_counter() - begin)
            equal = equal and torch.equal(logits["dynamic"], logits["reserved"])
            token = logits["dynamic"].argmax(-1, keepdim=True)
    ratios = [d / r for d, r in zip(times["dynamic"], times["reserved"], strict=True)]
    quartiles = statistics.quantiles(ratios, n=4)
    return {
        "batch": batch,
        "prompt": prompt,
        "steps": steps,
        "dynamic_ms": statistics.median(times["dynamic"]) * 1e3,
        "reserved_ms": statistics.median(times["reserved"]) * 1e3,
        "speedup": statistics.median(ratios),
        "speedup_quartiles": [quartiles[0], quartiles[2]],
        "logits_bit_equal": equal,
    }


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"# KV cache: DynamicCache vs ReservedCache (CPU) — {report['device']}",
        "",
        f"torch {report['versions']['torch']}, transformers {report['versions']['transformers']}; "
        f"SmolLM2-135M-Instruct decoder + LM head, fp32, {s['threads']} thread; decode steps alternate "
        f"between the two caches on the same tokens. Load average at start {s['load_average_at_start']}. "
        f"Command: `{s['command']}`.",
        "",
        "| batch | prompt | steps | DynamicCache ms/step | ReservedCache ms/step | speed-up (median, quartiles) "
        "| logits bit-equal |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        low, high = row["speedup_quartiles"]
        lines.append(
            f"| {row['batch']} | {row['prompt']} | {row['steps']} | {row['dynamic_ms']:.1f} | "
            f"{row['reserved_ms']:.1f} | {row['speedup']:.3f} ({low:.3f}–{high:.3f}) | "
            f"{'yes' if row['logits_bit_equal'] else '**no**'} |"
        )
    lines += ["", "Speed-up > 1: ReservedCache is faster. Each row's ratios are paired per step."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    import sys

    import transformers
    from transformers import AutoModelForCausalLM

    from flythinker.modeling.smollm import smollm2_path
    from flythinker.train.checkpoints import atomic_write_text

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="two small grid points, 8 steps")
    parser.add_argument("--out", type=Path, default=RESULTS / "kv_cache_cpu.json")
    args = parser.parse_args(argv)
    grid = ((1, 32), (2, 64)) if args.quick else GRID
    steps = 8 if args.quick else args.steps
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_path()), dtype=torch.float32).eval()
    load = [round(x, 2) for x in os.getloadavg()]
    results = []
    for batch, prompt in grid:
        row = paired_steps(model, batch, prompt, steps)
        print(
            f"batch {batch}, prompt {prompt}: dynamic {row['dynamic_ms']:.1f} ms, reserved "
            f"{row['reserved_ms']:.1f} ms, speed-up {row['speedup']:.3f}",
            flush=True,
        )
        results.append(row)
    report = {
        "device": f"CPU ({platform.machine()}), {os.cpu_count()} cores",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "settings": {
            "threads": args.threads,
            "load_average_at_start": load,
            "command": "python bench/bench_kv_cache.py " + " ".join(argv),
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
