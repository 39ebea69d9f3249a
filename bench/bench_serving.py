"""Serving benchmark: the FlyThinker pair vs the generator alone, both served by vLLM.

SmolLM2-135M-Instruct as generator and reasoner (fp32); the pair is a ``save_pretrained``
directory served through the ``flythinker-vllm`` plugin, the baseline is the SmolLM2 checkpoint
itself under plain vLLM. Same token prompts (PEP profiles from ``--data``, its user_val.jsonl), greedy, EOS off.

* batch: B requests submitted at once (B = 1, 4, 16): output tokens/s and wall time per batch;
* request rate: Poisson arrivals at R requests/s driven through ``LLMEngine.step``: TTFT and
  end-to-end latency (medians, p90) and output tokens/s.

Each engine runs in its own process (``--worker``). Run it inside the plugin's environment::

    nice -n 15 serving/vllm/.venv/bin/python bench/bench_serving.py --data DIR   # ~2-3 min on 2 CPU cores
    ... bench/bench_serving.py --quick --data tests/fixtures/peps              # smoke run

Writes ``bench/results/serving_<device>.json`` and ``.md`` (CPU: ratios are the point; on a GPU
the absolute numbers, with the device name).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pep_data import pep_split  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def prompts(tokenizer, count: int, length: int, data: Path) -> list[list[int]]:
    """``count`` real-text prompts of exactly ``length`` tokens from the PEP profiles of the JSONL file
    ``data`` (repeated when a profile is short)."""
    rows: list[list[int]] = []
    with open(data) as handle:
        for line in handle:
            if len(rows) == count:
                break
            record = json.loads(line)
            ids = tokenizer(json.dumps(record.get("profile", record))[: length * 8]).input_ids
            while len(ids) < length:
                ids = ids + ids
            rows.append(ids[:length])
    while len(rows) < count:
        rows.append(rows[len(rows) % max(len(rows), 1)])
    return rows


def pair_directory() -> Path:
    """FlyThinker(SmolLM2, SmolLM2) written by save_pretrained once, with the tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from flythinker import FlyThinkerForCausalLM
    from flythinker.modeling.smollm import fix_end_of_turn, smollm2_path

    source = smollm2_path()
    target = source.parent / "vllm-bench-smollm2-pair"
    if not (target / "config.json").exists():
        model = FlyThinkerForCausalLM.from_components(source, source, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source)
        fix_end_of_turn(tokenizer)
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
    return target


def synthetic_directories(root: Path, layers: int = 30) -> tuple[Path, Path]:
    """(generator alone, FlyThinker pair): random weights in SmolLM2-135M's shape, written by
    ``save_pretrained`` (no download, no data: what a GPU machine that reaches nothing can run)."""
    import torch

    from flythinker import FlyThinkerConfig, FlyThinkerForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_decode_gpu import smollm2_shaped

    generator_dir, pair_dir = root / "synthetic-generator", root / "synthetic-pair"
    if not (pair_dir / "config.json").exists():
        torch.manual_seed(0)
        config = FlyThinkerConfig(
            generator_config=smollm2_shaped(layers), reasoner_config=smollm2_shaped(layers)
        )
        model = FlyThinkerForCausalLM(config)
        model.generator.save_pretrained(generator_dir)
        model.save_pretrained(pair_dir)
    return generator_dir, pair_dir


def random_prompts(count: int, length: int, vocab: int = 49152) -> list[list[int]]:
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (count, length), generator=generator).tolist()


# ------------------------------------------------------------------------------------------ worker
def run_batch(llm, batch_prompts: list[list[int]], new_tokens: int) -> dict:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True, detokenize=False)
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in batch_prompts], params, use_tqdm=False)
    wall = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {
        "batch": len(batch_prompts),
        "wall_s": wall,
        "output_tokens": tokens,
        "tokens_per_s": tokens / wall,
    }


def run_rate(llm, rate_prompts: list[list[int]], new_tokens: int, rate: float, seed: int = 0) -> dict:
    """Poisson arrivals at ``rate`` req/s; the engine is stepped in between (continuous batching)."""
    import random

    from vllm import SamplingParams

    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True, detokenize=False)
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for _ in rate_prompts:
        arrivals.append(t)
        t += rng.expovariate(rate)
    engine = llm.llm_engine
    start = time.perf_counter()
    first: dict[str, float] = {}
    done: dict[str, float] = {}
    submitted: dict[str, float] = {}
    index = 0
    while index < len(rate_prompts) or engine.has_unfinished_requests():
        now = time.perf_counter() - start
        while index < len(rate_prompts) and arrivals[index] <= now:
            request_id = f"r{index}"
            engine.add_request(request_id, {"prompt_token_ids": rate_prompts[index]}, params)
            submitted[request_id] = arrivals[index]
            index += 1
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, arrivals[index] - (time.perf_counter() - start)))
            continue
        for output in engine.step():
            stamp = time.perf_counter() - start
            if output.outputs and output.outputs[0].token_ids and output.request_id not in first:
                first[output.request_id] = stamp
            if output.finished:
                done[output.request_id] = stamp
    wall = time.perf_counter() - start
    ttft = sorted(first[r] - submitted[r] for r in submitted)
    e2e = sorted(done[r] - submitted[r] for r in submitted)
    tokens = new_tokens * len(rate_prompts)
    return {
        "rate_req_s": rate,
        "requests": len(rate_prompts),
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "ttft_median_s": statistics.median(ttft),
        "ttft_p90_s": ttft[int(0.9 * (len(ttft) - 1))],
        "e2e_median_s": statistics.median(e2e),
        "e2e_p90_s": e2e[int(0.9 * (len(e2e) - 1))],
    }


def worker(spec: dict) -> dict:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM

    start = time.perf_counter()
    llm = LLM(
        spec["model"], dtype="float32", enforce_eager=True, skip_tokenizer_init=True, seed=0,
        max_model_len=spec["max_model_len"], max_num_seqs=max(spec["batches"]),
    )  # fmt: skip
    startup = time.perf_counter() - start
    all_prompts = spec["prompts"]
    run_batch(llm, all_prompts[:2], 4)  # warm-up
    batches = [run_batch(llm, all_prompts[:b], spec["new_tokens"]) for b in spec["batches"]]
    rates = [
        run_rate(llm, all_prompts[: spec["rate_requests"]], spec["new_tokens"], r) for r in spec["rates"]
    ]
    return {"startup_s": startup, "batches": batches, "rates": rates}


# ------------------------------------------------------------------------------------------ driver
def run_worker(spec: dict, out: Path) -> dict:
    spec_path = out.with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    subprocess.run([sys.executable, __file__, "--worker", str(spec_path), str(out)], check=True, env=env)
    return json.loads(out.read_text())


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.machine()}), {os.cpu_count()} cores"


def markdown(result: dict) -> str:
    pair, gen = result["flythinker"], result["generator"]
    lines = [
        f"# Serving benchmark ({result['device']})",
        "",
        f"vLLM {result['vllm']} (`{result['vllm_dist']}`), torch {result['torch']}; "
        f"{result.get('models', 'SmolLM2-135M-Instruct')} as generator and reasoner, fp32, enforce_eager; "
        f"prompts {result['prompt_tokens']} tokens ({'random ids' if 'synthetic' in result.get('models', '') else 'PEP profiles'}), "
        f"{result['new_tokens']} new tokens, greedy, EOS off. Load average at start {result['load_start']}, "
        f"at end {result['load_end']} (the machine was shared). Engine start-up: pair "
        f"{pair['startup_s']:.1f} s, generator {gen['startup_s']:.1f} s. Total run {result['total_s']:.0f} s.",
        "",
        "## Batches submitted at once",
        "",
        "| batch | generator tok/s | FlyThinker tok/s | FlyThinker / generator |",
        "|---|---|---|---|",
    ]
    for g, p in zip(gen["batches"], pair["batches"]):
        lines.append(
            f"| {g['batch']} | {g['tokens_per_s']:.1f} | {p['tokens_per_s']:.1f} | {p['tokens_per_s'] / g['tokens_per_s']:.2f} |"
        )
    lines += [
        "",
        f"## Poisson request rates ({result['rate_requests']} requests each)",
        "",
        "| rate req/s | generator tok/s | FlyThinker tok/s | ratio | TTFT med gen / FT s | e2e med gen / FT s | e2e p90 gen / FT s |",
        "|---|---|---|---|---|---|---|",
    ]
    for g, p in zip(gen["rates"], pair["rates"]):
        lines.append(
            f"| {g['rate_req_s']:g} | {g['tokens_per_s']:.1f} | {p['tokens_per_s']:.1f} | "
            f"{p['tokens_per_s'] / g['tokens_per_s']:.2f} | {g['ttft_median_s']:.3f} / {p['ttft_median_s']:.3f} | "
            f"{g['e2e_median_s']:.2f} / {p['e2e_median_s']:.2f} | {g['e2e_p90_s']:.2f} / {p['e2e_p90_s']:.2f} |"
        )
    lines += [
        "",
        "The pair runs two 135M stacks per token (the reasoner, then the generator, in one engine step) plus "
        "the slot's indexing and the fusion, so one request alone costs more than twice the generator's "
        "step; with larger batches the fixed per-step costs (scheduler, sampler, Python) are shared and "
        "the ratio rises. The rate rows time the engine under continuous batching (arrivals at random).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="random-weight SmolLM2-135M-shaped models and random prompts (no SmolLM2 package, no ../shared)",
    )
    parser.add_argument("--data", help="the PEP splits' folder (user_val.jsonl is read) or one JSONL file")
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(Path(args.worker[0]).read_text())
        Path(args.worker[1]).write_text(json.dumps(worker(spec)))
        return

    data = pep_split(args.data, "user_val", "bench/bench_serving.py")
    import importlib.metadata as metadata

    import torch

    started = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / "flythinker-bench-serving"
    scratch.mkdir(exist_ok=True)
    if args.synthetic:
        generator_dir, pair_dir = synthetic_directories(scratch)
    else:
        from transformers import AutoTokenizer

        from flythinker.modeling.smollm import fix_end_of_turn, smollm2_path

        generator_dir, pair_dir = smollm2_path(), pair_directory()
        tokenizer = AutoTokenizer.from_pretrained(generator_dir)
        fix_end_of_turn(tokenizer)
    prompt_tokens, new_tokens = (32, 8) if args.quick else (64, 32)
    batches = [1, 4] if args.quick else [1, 4, 16]
    rates = [4.0] if args.quick else [2.0, 8.0]
    rate_requests = 4 if args.quick else 12
    count = max(max(batches), rate_requests)
    spec = {
        "prompts": random_prompts(count, prompt_tokens) if args.synthetic else prompts(tokenizer, count, prompt_tokens, data),
        "new_tokens": new_tokens, "batches": batches, "rates": rates, "rate_requests": rate_requests,
        "max_model_len": 512,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "models": "random-weight SmolLM2-135M-shaped (--synthetic)"
        if args.synthetic
        else "SmolLM2-135M-Instruct",
        "device": device_name(),
        "vllm": __import__("vllm").__version__,
        "vllm_dist": "vllm-cpu" if not torch.cuda.is_available() else "vllm",
        "torch": torch.__version__,
        "flythinker_vllm": metadata.version("flythinker-vllm"),
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "rate_requests": rate_requests,
        "load_start": load_start,
        "generator": run_worker({**spec, "model": str(generator_dir)}, scratch / "generator.json"),
        "flythinker": run_worker({**spec, "model": str(pair_dir)}, scratch / "flythinker.json"),
    }
    result["load_end"] = [round(x, 2) for x in os.getloadavg()]
    result["total_s"] = time.perf_counter() - started
    stem = "serving_cpu" if not torch.cuda.is_available() else "serving_gpu"
    if args.synthetic:
        stem += "_synthetic"
    if args.quick:
        stem += "_quick"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
