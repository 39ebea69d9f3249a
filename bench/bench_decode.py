"""Decode benchmark: the generator alone vs FlyThinker sequential / threads / processes on CPU.

SmolLM2-135M-Instruct as both models (fp32). Measures, in paired, interleaved repeats (medians):

* time to first token with a long prompt (default 1536 tokens, batch 1);
* after a short prompt (default 128 tokens, greedy, EOS off) at batch 1 and 8, for each
  ``--new-tokens`` count: end-to-end tokens/s (new tokens / wall time of the whole call, prefill
  included), decode-only tokens/s, the median per-token latency and every decode step's time
  (``step_ms`` per run, ``step_ms_median_by_index`` per config: the md tables its growth by window);
* with ``--reasoner-layers K``, the same at batch 1 with the reasoner cut to the generator's first K
  layers (``truncated_pair``).

Baselines: ``hf_generate`` is transformers' ``model.generator.generate`` (greedy, ``min_new_tokens`` =
``max_new_tokens``; its steps are timed by a logits processor) — what a user of the generator alone
runs, with every core; ``generator`` is this library's loop on ``model.generator`` (no reasoner, no fusion,
the engine's CPU cache); ``generator_core_share`` is that loop with only the generator's share of the
threads under ``processes`` (1 of 2 cores here): the bound a split of the cores puts on FlyThinker.
``processes_whole_head`` is ``processes`` with ``share_head=False`` (the worker computes none of the
generator's LM-head rows): the paired ratio to it is what sharing the head gains.
Greedy tokens of every FlyThinker schedule are compared with ``sequential``'s.
Writes ``bench/results/decode_cpu.json`` and ``bench/results/decode_cpu.md``.

    python bench/bench_decode.py --data DIR     # ~8-10 minutes on 2 cores; DIR: the PEP splits
    python bench/bench_decode.py --quick --data tests/fixtures/peps   # a smoke run

Issue 25's table (≈ 7-8 minutes on 2 quiet cores; bench/results/README.md)::

    python bench/bench_decode.py --data DIR --batches 1 --new-tokens 64 256 \
        --configs hf_generate generator_core_share sequential processes --reasoner-layers 4 \
        --ttft-repeats 0 --repeats 3 --baseline-threads 2

Prompts are real text: PEP profiles from ``--data`` (its ``user_val.jsonl``), see bench/pep_data.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_report import goal_rows, markdown  # noqa: E402
from pep_data import pep_split  # noqa: E402

CONFIGS = (
    "hf_generate",
    "generator",
    "generator_core_share",
    "sequential",
    "threads",
    "processes",
    "processes_whole_head",
)
# configs that are a schedule run with options: processes without handing LM-head rows to the worker
VARIANTS = {"processes_whole_head": ("processes", {"share_head": False})}
BASELINES = ("hf_generate", "generator", "generator_core_share", "sequential")
RESULTS = Path(__file__).resolve().parent / "results"


def truncated_pair(generator_path: Path, layers: int):
    """FlyThinker(generator, reasoner = the generator's first ``layers`` decoder layers), fp32: the
    reasoner is cut by bench/quality/models.py's ``truncate_layers`` and saved once beside the
    checkpoint (as the quality bench reads it), the generator is the full checkpoint."""
    from quality.models import truncate_layers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flythinker import FlyThinkerForCausalLM

    folder = Path(generator_path).parent / f"{Path(generator_path).name}-first-{layers}-layers"
    if not (folder / "config.json").exists():
        lm = AutoModelForCausalLM.from_pretrained(generator_path, dtype=torch.float32)
        truncate_layers(lm, layers)
        partial = folder.with_name(folder.name + ".partial")
        lm.save_pretrained(partial)
        AutoTokenizer.from_pretrained(generator_path).save_pretrained(partial)
        partial.replace(folder)  # atomic: a crash leaves no half-written checkpoint under the name
    return FlyThinkerForCausalLM.from_components(
        generator=str(generator_path), reasoner=str(folder), dtype=torch.float32
    ).eval()


def prompt_ids(
    tokenizer, length: int, batch: int, data: Path, offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Real text (the PEP profiles of the JSONL file ``data``) tokenized and cut to ``length`` tokens per row."""
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
    """The generator's own greedy loop on the cache the engine uses on CPU (a ``DynamicCache``, fed
    the mask columns written so far), LM head on the last position only."""
    from transformers import DynamicCache

    generator = model.generator
    batch, length = input_ids.shape
    mask = torch.cat([attention_mask, attention_mask.new_ones(batch, max_new_tokens)], dim=1)
    positions = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    cache = DynamicCache(config=generator.config)

    def forward(ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        window = mask[:, : cache.get_seq_length() + ids.shape[1]]
        kwargs = dict(attention_mask=window, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return generator(input_ids=ids, position_ids=position_ids, **kwargs).logits[:, -1]

    begin = time.perf_counter()
    token = forward(input_ids, positions).argmax(-1)
    first = time.perf_counter()
    position, steps, tokens = positions[:, -1:], [], [token]
    for _ in range(max_new_tokens - 1):
        tick = time.perf_counter()
        position = position + 1
        token = forward(token[:, None], position).argmax(-1)
        tokens.append(token)
        steps.append(time.perf_counter() - tick)
    end = time.perf_counter()
    return _timing(begin, first, end, steps, max_new_tokens, torch.stack(tokens, 1))


class _FirstTokenClock:
    """A logits processor that notes when each of ``generate``'s forwards has finished: the first is
    the prefill, the gaps between the next ones are its decode steps."""

    def __init__(self):
        self.stamps: list[float] = []

    @property
    def first(self) -> float:
        return self.stamps[0]

    def __call__(self, input_ids, scores):
        self.stamps.append(time.perf_counter())
        return scores


@torch.no_grad()
def hf_generate(model, input_ids, attention_mask, max_new_tokens: int) -> dict:
    """transformers' ``generate`` of the generator alone: greedy, exactly ``max_new_tokens`` tokens."""
    from transformers import LogitsProcessorList

    clock = _FirstTokenClock()
    begin = time.perf_counter()
    out = model.generator.generate(
        input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=0,
        logits_processor=LogitsProcessorList([clock]),
    )
    end = time.perf_counter()
    steps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]  # one per decode step
    return _timing(begin, clock.first, end, steps, max_new_tokens, out[:, input_ids.shape[1] :])


def _timing(begin, first, end, steps, new_tokens, tokens) -> dict:
    return {
        "ttft_s": first - begin,
        "per_token_s": statistics.median(steps) if steps else 0.0,
        "tokens_per_s": len(steps) / (end - first) if steps else 0.0,
        "end_to_end_tokens_per_s": new_tokens / (end - begin),
        "total_s": end - begin,
        "step_ms": [round(step * 1e3, 3) for step in steps],
        "tokens": tokens,
    }


def flythinker_run(model, config, input_ids, attention_mask, max_new_tokens, threads) -> dict:
    from flythinker.decoding import generate

    schedule, options = VARIANTS.get(config, (config, {}))
    out = generate(
        model,
        input_ids,
        attention_mask,
        schedule=schedule,
        max_new_tokens=max_new_tokens,
        eos_token_id=(),
        pad_token_id=0,
        threads=threads,
        **options,
    )
    t = out.timings
    return {
        "ttft_s": t.time_to_first_token_s,
        "per_token_s": t.per_token_s,
        "tokens_per_s": t.tokens_per_s,
        "end_to_end_tokens_per_s": max_new_tokens / t.total_s,
        "total_s": t.total_s,
        "prefill_chunk": out.settings.prefill_chunk,
        "reasoner_head_share": t.reasoner_head_share,
        "step_ms": [round(step * 1e3, 3) for step in t.step_s],
        "tokens": out.new_tokens,
    }


BASELINE_THREADS: int | None = None  # --baseline-threads (None = torch's default, all cores)


def run_config(name, model, input_ids, attention_mask, max_new_tokens, threads) -> dict:
    if name not in BASELINES:  # the engine splits the cores itself
        return flythinker_run(model, name, input_ids, attention_mask, max_new_tokens, threads)
    saved = torch.get_num_threads()
    if name == "generator_core_share":
        torch.set_num_threads(threads[0])
    elif BASELINE_THREADS is not None:
        torch.set_num_threads(BASELINE_THREADS)
    try:
        if name == "hf_generate":
            return hf_generate(model, input_ids, attention_mask, max_new_tokens)
        if name in ("generator", "generator_core_share"):
            return generator_alone(model, input_ids, attention_mask, max_new_tokens)
        return flythinker_run(model, name, input_ids, attention_mask, max_new_tokens, threads)
    finally:
        torch.set_num_threads(saved)


RATIO_BASES = ("hf_generate", "generator", "generator_core_share", "sequential", "processes_whole_head")


def paired(model, input_ids, attention_mask, max_new_tokens, repeats, threads, configs, label) -> dict:
    """Interleaved repeats (rotating order); per-config medians and per-repeat paired ratios.

    Also checks that every FlyThinker schedule's greedy tokens equal ``sequential``'s (when it ran)."""
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
            for key in ("ttft_s", "per_token_s", "tokens_per_s", "end_to_end_tokens_per_s", "total_s")
        }
        if "sequential" in configs and name not in ("hf_generate", "generator", "generator_core_share"):
            reference = runs["sequential"][0]["tokens"]
            summary[name]["tokens_equal_sequential"] = all(
                torch.equal(run["tokens"], reference) for run in runs[name]
            )
        summary[name]["runs"] = [{k: v for k, v in run.items() if k != "tokens"} for run in runs[name]]
        summary[name]["step_ms_median_by_index"] = step_trace([run["step_ms"] for run in runs[name]])
    if {"hf_generate", "sequential", "processes"} <= set(runs):
        bounds = two_prefill_bounds(runs["hf_generate"], runs["sequential"])
        summary["processes"]["two_prefill_bound_vs_hf_generate"] = statistics.median(bounds)
        summary["processes"]["two_prefill_bound_vs_hf_generate_range"] = [min(bounds), max(bounds)]
    for name in configs:  # paired ratios: median (and range) over repeats of the same-repeat ratio
        for base in RATIO_BASES:
            if base not in configs or name == base:
                continue
            for key, field_name in (
                ("tokens_per_s", "speed_vs"),
                ("end_to_end_tokens_per_s", "end_to_end_vs"),
                ("ttft_s", "ttft_ratio_vs"),
            ):
                values = [runs[name][i][key] / runs[base][i][key] for i in range(repeats)]
                summary[name][f"{field_name}_{base}"] = statistics.median(values)
                summary[name][f"{field_name}_{base}_range"] = [min(values), max(values)]
    return summary


def step_trace(traces: list[list[float]]) -> list[float]:
    """Per decode-step index, the median over repeats of that step's time (ms): the growth shape of a
    config's step cost and any step at which it jumps (a cache regrowing, a threshold)."""
    length = min((len(trace) for trace in traces), default=0)
    return [round(statistics.median(trace[i] for trace in traces), 3) for i in range(length)]


def two_prefill_bounds(hf_runs: list[dict], sequential_runs: list[dict]) -> list[float]:
    """Per repeat, the end-to-end ratio to ``generate`` that FlyThinker would reach if it decoded at
    ``generate``'s own per-token speed and paid only its two prefills (sequential's time to first
    token: R's prompt, then G's, each on every core):

        bound = total_hf / (ttft_sequential + total_hf − ttft_hf)

    Both models prefill the same prompt, so on a compute-bound CPU this is below 1 whenever decoding
    is only as fast as ``generate``'s; the goal is reachable only above it."""
    return [
        hf["total_s"] / (seq["ttft_s"] + hf["total_s"] - hf["ttft_s"])
        for hf, seq in zip(hf_runs, sequential_runs, strict=True)
    ]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--long-prompt", type=int, default=1536)
    parser.add_argument("--short-prompt", type=int, default=128)
    parser.add_argument(
        "--new-tokens", type=int, nargs="+", default=[64], help="one decode section per count and batch"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ttft-repeats", type=int, default=2, help="0: no long-prompt TTFT section")
    parser.add_argument(
        "--reasoner-layers",
        type=int,
        default=0,
        help="K > 0: also decode (batch 1, every --new-tokens count) with the reasoner cut to the "
        "generator's first K layers, as bench/quality/models.py builds it (default: 0, none)",
    )
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument(
        "--baseline-threads",
        type=int,
        default=None,
        help="threads for the baselines (hf_generate, generator, sequential; default: all cores)",
    )
    parser.add_argument(
        "--host-allocator",
        choices=("reuse", "default"),
        default="reuse",
        help="'reuse' tunes glibc malloc to keep freed memory in this process (flythinker.kernels."
        "host_memory; the reasoner worker always does); 'default' leaves it (default: reuse)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    parser.add_argument("--data", help="the PEP splits' folder (user_val.jsonl is read) or one JSONL file")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS / "decode_cpu.json",
        help="results file (.json; a .md table is written beside it) or a folder",
    )
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    data = pep_split(args.data, "user_val", "bench/bench_decode.py")
    if args.out.is_dir():  # a results folder: use the default file name inside it
        args.out = args.out / "decode_cpu.json"
    if args.quick:  # the same sections, tiny: prompts of 32 tokens, 8 (16, ...) new tokens, 1 repeat
        args.long_prompt, args.short_prompt, args.repeats = 256, 32, 1
        args.new_tokens = [8 * (i + 1) for i in range(len(args.new_tokens))]
        args.ttft_repeats = min(args.ttft_repeats, 1)
        if "--batches" not in argv:
            args.batches = [1, 2]
        if args.out == RESULTS / "decode_cpu.json":
            args.out = RESULTS / "decode_cpu_quick.json"

    import transformers
    from transformers import AutoTokenizer

    from flythinker import FlyThinkerForCausalLM
    from flythinker.decoding import CPU_CONCURRENT_DEFAULT, shutdown_workers
    from flythinker.decoding.settings import default_cpu_threads
    from flythinker.kernels.host_memory import host_memory_settings, keep_freed_host_memory
    from flythinker.modeling.smollm import fix_end_of_turn, smollm2_path

    if args.host_allocator == "reuse":
        keep_freed_host_memory()
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

    def warm_up(pair, batches) -> None:
        """A 2-token call of every config per batch size, its prompt as long as the longest call: starts
        the worker, hands it this pair's reasoner and sizes its exchange buffers, so that no timed
        call pays for any of them."""
        print("warm-up (the reasoner worker process, this pair's weights, buffer sizes)", flush=True)
        for batch in batches:
            ids, mask = prompt_ids(tokenizer, args.short_prompt + max(args.new_tokens), batch, data)
            for name in configs:
                run_config(name, pair, ids, mask, 2, threads)

    warm_up(model, args.batches)
    results, section_load = {}, {}
    if args.ttft_repeats > 0:
        ids, mask = prompt_ids(tokenizer, args.long_prompt, 1, data)
        label = f"TTFT, {args.long_prompt}-token prompt, batch 1"
        print(label, flush=True)
        section_load[label] = list(os.getloadavg())
        results[label] = paired(model, ids, mask, 2, args.ttft_repeats, threads, configs, "ttft")
    sections = [(model, batch, new, "") for batch in args.batches for new in args.new_tokens]
    truncated = None
    if args.reasoner_layers:
        truncated = truncated_pair(path, args.reasoner_layers)
        layers = model.config.reasoner_config.num_hidden_layers
        suffix = f", reasoner = first {args.reasoner_layers} of {layers} layers"
        sections += [(truncated, 1, new, suffix) for new in args.new_tokens]
    for pair, batch, new, suffix in sections:
        if pair is truncated and new == args.new_tokens[0]:
            warm_up(pair, [1])
        ids, mask = prompt_ids(tokenizer, args.short_prompt, batch, data)
        label = f"decode, {args.short_prompt}-token prompt, {new} new tokens, batch {batch}{suffix}"
        print(label, flush=True)
        section_load[label] = list(os.getloadavg())
        results[label] = paired(
            pair, ids, mask, new, args.repeats, threads, configs, f"b{batch}/{new}{suffix}"
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
            "command": "python bench/bench_decode.py " + " ".join(argv),
            "threads_available": cores,
            "thread_split_generator_reasoner": threads,
            "cpu_concurrent_default": CPU_CONCURRENT_DEFAULT,
            "dtype": "float32",
            "model": "SmolLM2-135M-Instruct (generator and reasoner)",
            "baseline_threads": args.baseline_threads or torch.get_num_threads(),
            "host_allocator": host_memory_settings() or "default",
            "load_average_at_start": load_at_start,
            "load_average_at_end": list(os.getloadavg()),
            "load_average_before_each_section": section_load,
            "reasoner_truncated_to_layers": args.reasoner_layers or None,
        },
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "results": results,
        "goals": goal_rows(results),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(args.out)
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
