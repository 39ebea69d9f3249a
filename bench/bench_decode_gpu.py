"""Decode benchmark on one CUDA GPU: the generator alone vs FlyThinker's schedules (``make gpu-check``).

Random weights in SmolLM2-135M's shape for both models (speed does not depend on the values; no
download is needed on a machine that reaches nothing), bf16. After a random-token prompt (default
128 tokens), greedy with EOS off, at batch 1 and 8, medians of interleaved repeats:

* ``hf_generate`` — transformers' ``generate`` of the generator alone (what a user runs without a reasoner);
* ``sequential`` — R then G in one stream (the reference of the tokens);
* ``cuda-streams`` — R and G on two CUDA streams;
* ``cuda-streams+graphs`` — the same, one-token steps compiled with ``reduce-overhead`` (CUDA graphs).

Wall time is measured around each call with ``torch.cuda.synchronize``. ``tokens_equal_sequential``
says whether a schedule's tokens equal sequential's (bf16 compiled kernels may round differently).
Writes ``--out`` (``.json``) and the ``.md`` beside it, with the device name.

    python bench/bench_decode_gpu.py                  # ~1 minute on an H100
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = ("hf_generate", "sequential", "cuda-streams", "cuda-streams+graphs")


def smollm2_shaped(layers: int = 30):
    """A LlamaConfig with SmolLM2-135M's dimensions (576 wide, 9/3 heads, 49152 vocabulary)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True,
        rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip


def build_model(dtype: torch.dtype, device: str, layers: int = 30):
    from flythinker import FlyThinkerConfig, FlyThinkerForCausalLM

    torch.manual_seed(0)
    config = FlyThinkerConfig(generator_config=smollm2_shaped(layers), reasoner_config=smollm2_shaped(layers))
    return FlyThinkerForCausalLM(config).to(device=device, dtype=dtype).eval()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def run(
    model, name: str, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int
) -> tuple[float, torch.Tensor]:
    """(seconds for the whole call, new tokens [B, new_tokens])."""
    from flythinker.decoding import generate

    synchronize(ids.device)
    start = time.perf_counter()
    if name == "hf_generate":
        out = model.generator.generate(
            ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            pad_token_id=0,
        )  # fmt: skip
        tokens = out[:, ids.shape[1] :]
    else:
        schedule = name.split("+")[0]
        out = generate(
            model, ids, mask, schedule=schedule, max_new_tokens=new_tokens, eos_token_id=(), pad_token_id=0,
            compile=name.endswith("+graphs"),
        )  # fmt: skip
        tokens = out.new_tokens
    synchronize(ids.device)
    return time.perf_counter() - start, tokens


def measure(
    model, batch: int, prompt: int, new_tokens: int, repeats: int, configs, device: str = "cuda"
) -> dict:
    generator = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, 49152, (batch, prompt), generator=generator).to(device)
    mask = torch.ones_like(ids)
    for name in configs:  # warm-up: kernels, autotuning, graph capture
        run(model, name, ids, mask, 4)
    times: dict[str, list[float]] = {name: [] for name in configs}
    tokens = {}
    for repeat in range(repeats):
        order = configs[repeat % len(configs) :] + configs[: repeat % len(configs)]
        for name in order:
            seconds, tokens[name] = run(model, name, ids, mask, new_tokens)
            times[name].append(seconds)
    reference = tokens.get("sequential")
    rows = {}
    for name in configs:
        median = statistics.median(times[name])
        rows[name] = {
            "seconds": median,
            "tokens_per_s": batch * new_tokens / median,
            # the generator alone has no reasoner: its tokens are not comparable
            "tokens_equal_sequential": None
            if reference is None or name == "hf_generate"
            else bool(torch.equal(tokens[name], reference)),
        }
    if "hf_generate" in rows:
        for row in rows.values():
            row["vs_generator_alone"] = rows["hf_generate"]["seconds"] / row["seconds"]
    return rows


def markdown(report: dict) -> str:
    lines = [
        f"# Decode benchmark (GPU) — {report['device']}",
        "",
        f"torch {report['torch']}; two random-weight SmolLM2-135M-shaped models ({report['layers']} layers each), {report['dtype']}; "
        f"{report['prompt']}-token random prompts, {report['new_tokens']} new tokens, greedy, EOS off; medians of "
        f"{report['repeats']} interleaved repeats; whole-call wall time (prefill included).",
        "",
        "| batch | config | tokens/s | × generator alone | tokens = sequential |",
        "|---|---|---|---|---|",
    ]
    for batch, rows in report["batches"].items():
        for name, row in rows.items():
            ratio = row.get("vs_generator_alone")
            lines.append(
                f"| {batch} | {name} | {row['tokens_per_s']:.0f} | {'' if ratio is None else f'{ratio:.2f}'} | "
                f"{row['tokens_equal_sequential']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_decode.json")
    parser.add_argument("--layers", type=int, default=30, help="layers of each model (SmolLM2-135M: 30)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a plumbing test only")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_decode_gpu: no CUDA device; run it on a GPU machine (docs/gpu-check.md)")
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = build_model(dtype, args.device, args.layers)
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU (plumbing test)"
    report = {
        "device": device_name, "layers": args.layers, "torch": torch.__version__, "dtype": str(dtype),
        "prompt": args.prompt, "new_tokens": args.new_tokens, "repeats": args.repeats, "batches": {},
    }  # fmt: skip
    for batch in args.batches:
        print(f"batch {batch}", flush=True)
        report["batches"][str(batch)] = measure(
            model, batch, args.prompt, args.new_tokens, args.repeats, list(args.configs), args.device
        )
    from flythinker.train.checkpoints import atomic_write_text

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
