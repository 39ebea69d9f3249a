"""Serving benchmark: the FlyThinker pair vs the generator alone, both served by vLLM.

SmolLM2-135M-Instruct as generator and reasoner (fp32); the pair is a ``save_pretrained``
directory served through the ``flythinker-vllm`` plugin, the baseline is the SmolLM2 checkpoint
itself under plain vLLM. Real-text prompts of mixed lengths (PEP profiles from ``--data``, its
user_val.jsonl, cut to lengths spread up to ``--max-prompt`` tokens), the same token ids for every
config; greedy, EOS off. Configs, each a fresh engine in its own process (``--worker``):

* ``generator`` — the generator alone in plain vLLM with every core;
* ``generator_1core`` — the same held to one core (the process's CPU affinity set to CPU 0 and one
  torch thread): on 2 cores, the resources each model of the pair gets;
* ``pair_sequential`` — the pair, plugin default (R, then G, in each engine step);
* ``pair_overlap`` — the pair with ``FLYTHINKER_VLLM_OVERLAP=1`` (R beside G in decode-only steps;
  CUDA only: the plugin refuses it on CPU, so the CPU default leaves it out).

Batch 1 runs ``--batch1-prompts`` prompts one after the other; batch N submits N prompts at once.
Tokens/s per batch size, both ratios of each pair config (against ``generator`` and
``generator_1core``), the greedy tokens of both pair configs compared, CPU time / wall time of each
engine (it shows the one-core config used one core). Threads: each engine runs in its process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``: vLLM's single-process ``uni`` executor), where vLLM binds no
OpenMP threads (``VLLM_CPU_OMP_THREADS_BIND`` and ``VLLM_CPU_NUM_OF_RESERVED_CPU`` act only in its
multiprocess executor, which would also reserve a core for the scheduler); the worker sets
``OMP_NUM_THREADS`` and torch's threads to its allowed CPUs before vLLM starts (vLLM's CPU worker
then disables ``torch.set_num_threads``). Run it inside the plugin's environment::

    /work/vllm-venv/bin/python bench/bench_serving.py --data DIR      # ≈ 7-8 min on 2 quiet cores
    ... bench/bench_serving.py --quick --data tests/fixtures/peps     # smoke run (tiny sizes)

Writes ``bench/results/serving_<device>.json`` and ``.md`` (serving_report.py); ``--quick`` adds
``_quick`` to the name. ``--rates`` adds Poisson-arrival runs (off by default: they do not fit the
time budget of a quiet window on 2 cores).
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
from serving_report import markdown, ratios  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = ("generator", "generator_1core", "pair_sequential", "pair_overlap")
ONE_CORE = 0  # the CPU generator_1core is held to


def spread_lengths(count: int, low: int, high: int) -> list[int]:
    """``count`` prompt lengths evenly spread over [low, high], in an order that mixes short and long
    (so neither end of a batch is all long prompts)."""
    if count == 1:
        return [high]
    even = [round(low + (high - low) * i / (count - 1)) for i in range(count)]
    return even[0::2] + even[1::2][::-1]


def mixed_prompts(tokenizer, lengths: list[int], data: Path) -> list[list[int]]:
    """Real-text prompts: record i of the JSONL file ``data`` (its PEP profile), tokenized and cut to
    ``lengths[i]`` tokens (repeated when shorter; records reused when the file has fewer)."""
    texts = []
    with open(data) as handle:
        for line in handle:
            if len(texts) == len(lengths):
                break
            record = json.loads(line)
            texts.append(json.dumps(record.get("profile", record)))
    if not texts:
        raise SystemExit(f"bench/bench_serving.py: --data {data} has no records")
    rows = []
    for i, length in enumerate(lengths):
        ids = tokenizer(texts[i % len(texts)][: length * 8]).input_ids
        while len(ids) < length:
            ids = ids + ids
        rows.append(ids[:length])
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
    token_ids = [list(o.outputs[0].token_ids) for o in outputs]
    tokens = sum(len(ids) for ids in token_ids)
    return {
        "batch": len(batch_prompts),
        "wall_s": wall,
        "output_tokens": tokens,
        "tokens_per_s": tokens / wall,
        "token_ids": token_ids,
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


def thread_affinities() -> dict[str, int]:
    """How many of this process's threads may run on each set of CPUs (``/proc/self/task``)."""
    counts: dict[str, int] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Cpus_allowed_list:"):
                cpus = line.split(":", 1)[1].strip()
                counts[cpus] = counts.get(cpus, 0) + 1
    return counts


def worker(spec: dict) -> dict:
    """One engine: batch 1 (the prompts one after the other) and batch N, ``repeats`` times each."""
    import resource

    if spec.get("one_core"):  # before torch / vLLM start any thread: every thread inherits it
        os.sched_setaffinity(0, {ONE_CORE})
    cores = len(os.sched_getaffinity(0))
    os.environ["OMP_NUM_THREADS"] = str(cores)  # OpenMP's default for every thread, a caller's export aside
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    import torch
    from vllm import LLM

    torch.set_num_threads(cores)  # before vLLM's CPU worker turns set_num_threads into a no-op

    start = time.perf_counter()
    llm = LLM(
        spec["model"], dtype="float32", enforce_eager=True, skip_tokenizer_init=True, seed=0,
        max_model_len=spec["max_model_len"], max_num_seqs=max(spec["batches"]),
    )  # fmt: skip
    startup = time.perf_counter() - start
    run_batch(llm, spec["prompts_n"][:2], 4)  # warm-up
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before, wall = usage.ru_utime + usage.ru_stime, 0.0
    batches, tokens = [], {}
    for _ in range(spec["repeats"]):
        for batch in spec["batches"]:
            if batch == 1:
                runs = [run_batch(llm, [p], spec["new_tokens"]) for p in spec["prompts_1"]]
                row = {
                    "batch": 1,
                    "requests": len(runs),
                    "wall_s": sum(r["wall_s"] for r in runs),
                    "output_tokens": sum(r["output_tokens"] for r in runs),
                }
                row["tokens_per_s"] = row["output_tokens"] / row["wall_s"]
                tokens.setdefault("batch_1", [r["token_ids"][0] for r in runs])
            else:
                row = run_batch(llm, spec["prompts_n"][:batch], spec["new_tokens"])
                tokens.setdefault(f"batch_{batch}", row["token_ids"])
            row.pop("token_ids", None)
            batches.append(row)
            wall += row["wall_s"]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    rates = [
        run_rate(llm, spec["prompts_n"][: spec["rate_requests"]], spec["new_tokens"], r)
        for r in spec["rates"]
    ]
    return {
        "startup_s": startup,
        "batches": batches,
        "rates": rates,
        "tokens": tokens,
        "cpu_s": cpu,
        "timed_wall_s": wall,
        "cpu_per_wall": cpu / wall if wall else None,
        "torch_threads": torch.get_num_threads(),
        "cpus_allowed": ",".join(str(c) for c in sorted(os.sched_getaffinity(0))),
        "threads_by_cpus_allowed": thread_affinities(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("VLLM_CPU", "FLYTHINKER_VLLM", "OMP_"))},
    }


# ------------------------------------------------------------------------------------------ driver
def config_spec(name: str, generator_dir: Path, pair_dir: Path) -> tuple[dict, dict[str, str]]:
    """(spec additions, environment) of one config."""
    if name not in CONFIGS:
        raise SystemExit(
            f"bench/bench_serving.py: --configs: unknown config {name!r} (use {', '.join(CONFIGS)})"
        )
    model = str(generator_dir if name.startswith("generator") else pair_dir)
    env = {"FLYTHINKER_VLLM_OVERLAP": "1" if name == "pair_overlap" else "0"}
    return {"model": model, "one_core": name == "generator_1core"}, env


def run_worker(spec: dict, out: Path, env_extra: dict[str, str]) -> dict:
    """The engine of ``spec`` in a fresh process (in-process engine core, so one process holds it)."""
    spec_path = out.with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", **env_extra)
    subprocess.run([sys.executable, __file__, "--worker", str(spec_path), str(out)], check=True, env=env)
    return json.loads(out.read_text())


def token_checks(configs: dict) -> list[str]:
    """Greedy tokens compared: the two pair configs (must be equal), and the generator on every core
    against one core (thread counts may change float reductions, so reported only)."""
    lines = []
    for a, b, must in (("pair_sequential", "pair_overlap", True), ("generator", "generator_1core", False)):
        if a in configs and b in configs:
            same = configs[a]["tokens"] == configs[b]["tokens"]
            kind = "required" if must else "reported only"
            lines.append(f"tokens {a} == {b}: {'yes' if same else 'NO'} ({kind})")
    return lines


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.machine()}), {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (short prompts, 8 tokens)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="random-weight SmolLM2-135M-shaped models and random prompts (no SmolLM2 package, no ../shared)",
    )
    parser.add_argument("--data", help="the PEP splits' folder (user_val.jsonl is read) or one JSONL file")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=None,
        help="default: generator generator_1core pair_sequential (CPU); generator pair_sequential pair_overlap (CUDA)",
    )
    parser.add_argument("--batch", type=int, default=16, help="the large batch size (default 16)")
    parser.add_argument("--batch1-prompts", type=int, default=4, help="prompts run one by one at batch 1")
    parser.add_argument("--min-prompt", type=int, default=40)
    parser.add_argument("--max-prompt", type=int, default=600)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="repeats of each batch in each engine")
    parser.add_argument(
        "--rates", type=float, nargs="*", default=[], help="Poisson rates, req/s (default none)"
    )
    parser.add_argument("--rate-requests", type=int, default=12)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.worker[0]).read_text())
        Path(args.worker[1]).write_text(json.dumps(worker(spec)))
        return

    import importlib.metadata as metadata

    import torch

    cuda = torch.cuda.is_available()
    # the plugin refuses the overlapped step on CPU (vLLM's CPU GEMMs are not safe on two threads)
    configs = args.configs or [c for c in CONFIGS if c != ("generator_1core" if cuda else "pair_overlap")]
    if args.quick:
        args.min_prompt, args.max_prompt, args.new_tokens = 16, 48, 8
        args.batch, args.batch1_prompts, args.repeats = 4, 2, 1
        args.rates = args.rates[:1]
        args.rate_requests = 4
    data = None if args.synthetic else pep_split(args.data, "user_val", "bench/bench_serving.py")
    started = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / "flythinker-bench-serving"
    scratch.mkdir(exist_ok=True)
    lengths_n = spread_lengths(args.batch, args.min_prompt, args.max_prompt)
    step = max(1, len(lengths_n) // args.batch1_prompts)
    picks = sorted(range(len(lengths_n)), key=lambda i: lengths_n[i])[step // 2 :: step][
        : args.batch1_prompts
    ]
    if args.synthetic:
        generator_dir, pair_dir = synthetic_directories(scratch)
        prompts_n = [p[:n] for p, n in zip(random_prompts(len(lengths_n), max(lengths_n)), lengths_n)]
        source = "random ids"
    else:
        from transformers import AutoTokenizer

        from flythinker.modeling.smollm import fix_end_of_turn, smollm2_path

        generator_dir, pair_dir = smollm2_path(), pair_directory()
        tokenizer = AutoTokenizer.from_pretrained(generator_dir)
        fix_end_of_turn(tokenizer)
        prompts_n = mixed_prompts(tokenizer, lengths_n, data)
        source = f"PEP profiles, {data}"
    prompts_1 = [prompts_n[i] for i in picks]
    spec = {
        "prompts_1": prompts_1, "prompts_n": prompts_n, "new_tokens": args.new_tokens,
        "batches": [1, args.batch], "repeats": args.repeats, "rates": args.rates,
        "rate_requests": args.rate_requests, "max_model_len": 64 * ((max(lengths_n) + args.new_tokens) // 64 + 1),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name in configs:
        extra, env = config_spec(name, generator_dir, pair_dir)
        print(f"{name}: engine start, batches {spec['batches']} x {args.repeats}", flush=True)
        out = scratch / f"{name}-{os.getpid()}.json"  # runs of other sessions share the scratch folder
        runs[name] = run_worker({**spec, **extra}, out, env)
    result = {
        "models": "random-weight SmolLM2-135M-shaped (--synthetic)" if args.synthetic else "SmolLM2-135M-Instruct",
        "device": device_name(),
        "vllm": __import__("vllm").__version__,
        "vllm_dist": "vllm-cpu" if not cuda else "vllm",
        "torch": torch.__version__,
        "flythinker_vllm": metadata.version("flythinker-vllm"),
        "dtype": "float32",
        "enforce_eager": True,
        "prompt_source": source,
        "prompt_lengths": {"batch_1": [len(p) for p in prompts_1], "batch_n": [len(p) for p in prompts_n]},
        "new_tokens": args.new_tokens,
        "batch_sizes": spec["batches"],
        "repeats": args.repeats,
        "rate_requests": args.rate_requests,
        "command": "python bench/bench_serving.py " + " ".join(argv),
        "load_start": load_start,
        "configs": runs,
    }  # fmt: skip
    result["load_end"] = [round(x, 2) for x in os.getloadavg()]
    result["total_s"] = time.perf_counter() - started
    result["ratios"] = {f"batch_{b}": ratios(runs, b) for b in spec["batches"]}
    result["tokens_equal"] = token_checks(runs)
    stem = "serving_cpu" if not cuda else "serving_gpu"
    if args.synthetic:
        stem += "_synthetic"
    if args.quick:
        stem += "_quick"
    text = markdown(result)
    for suffix, body in ((".json", json.dumps(result, indent=2) + "\n"), (".md", text)):
        target = args.out / f"{stem}{suffix}"
        partial = target.with_name(target.name + ".tmp")
        partial.write_text(body)
        partial.replace(target)
    print(text)
    if any(": NO (required)" in line for line in result["tokens_equal"]):
        raise SystemExit("bench/bench_serving.py: the pair's tokens differ between configs (see the report)")


if __name__ == "__main__":
    main()
