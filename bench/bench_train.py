"""Training-step benchmark: flythinker's pipeline vs the reference recipe, and FlyThinker vs SFT.

SmolLM2-135M-Instruct as generator and reasoner (fp32 on CPU, bf16 on CUDA), records from the PEP
data (``--data``: the PEP splits' folder, whose ``user_train.jsonl`` is read, LongLaMP abstract-generation schema). Every variant
trains the same weights with one shared AdamW (lr 5e-6, weight decay 0.025) on the same records:

=====================  ==========================================================================
variant                one step
=====================  ==========================================================================
flythinker_padded      ``PromptBuilder(max_length)`` examples, ``PaddingCollator`` (dynamic
                       padding), ``FlyThinkerForCausalLM`` forward with the fused loss
flythinker_packed      the same examples through ``PackingCollator`` (one row per ``max_length``)
reference              the reference recipe (``train_reference.py``): the same examples
                       left-padded to 2,550 tokens, reasoner as a full causal LM with logits and a
                       KV cache, eager injection, generator with a KV cache, plain loss
sft                    the generator alone on the padded batch, same loss function
reasoner_fwd_bwd       the reasoner backbone forward + backward of a dummy scalar loss
                       (mean of squared hidden states); its optimizer update is timed apart
=====================  ==========================================================================

Steps run interleaved (one warm-up round, then rounds in rotating order) and the tables report
medians. Throughput counts **real (non-pad) tokens** per second of a whole step (forward, backward,
AdamW). FlyThinker vs SFT: ``t_flythinker / (t_sft + t_reasoner_fwd_bwd)`` with medians of the same
rounds (target ≤ 1.03).

Peak memory is measured on each variant's warm-up step (see ``train_memory.py``): on CUDA
``max_memory_allocated``; on CPU the tensor-level peak from ``torch.profiler`` memory events plus the
bytes already live (parameters, optimizer state). ``--memory-subprocess`` additionally runs each
variant once in a fresh child process and reports its peak RSS (``VmHWM``) and RSS increase.

    python bench/bench_train.py --out bench/results/          # CPU defaults: ~15-25 min on 2 busy cores
    python bench/bench_train.py --records 1 --repeats 1 --reference-repeats 1   # quicker
    python bench/bench_train.py --variants flythinker_padded,sft,reasoner_fwd_bwd --repeats 8 \
        --stem train_cpu_sft                                  # FlyThinker vs SFT only, more repeats

Writes ``train_<device>.json`` and ``train_<device>.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pep_data import pep_split  # noqa: E402
from train_memory import (  # noqa: E402
    read_peak_rss,
    read_rss,
    reset_peak_rss,
)
from train_reference import REFERENCE_ROW_LENGTH, ReferenceRecipe, reference_collate  # noqa: E402, F401 (tests use bt.*)
from train_report import environment, summarize, write_results  # noqa: E402
from train_steps import (  # noqa: E402
    VARIANTS,
    Variant,
    build_variants,
    init_optimizer_state,
    make_optimizer,
    measure,
    run_step,
)

RESULTS = Path(__file__).resolve().parent / "results"
PIPELINE_VARIANTS = ("flythinker_padded", "flythinker_packed", "reference")
DEVICE_DEFAULTS = {
    "cpu": {"records": 1, "max_length": 1024, "repeats": 3, "reference_repeats": 1},
    "cuda": {"records": 8, "max_length": 2048, "repeats": 5, "reference_repeats": 5},
}


# ------------------------------------------------------------------------------------------- model
def load_pair(path: str, dtype: torch.dtype, device: torch.device):
    """``(model, reasoner_lm, tokenizer)``: a FlyThinker of two copies of the checkpoint at ``path``.

    ``reasoner_lm`` is the reasoner as a full causal LM whose backbone *is* ``model.reasoner`` (shared
    weights; SmolLM2 ties its ``lm_head`` to the embedding), for the reference recipe.
    """
    from transformers import AutoModelForCausalLM

    from flythinker import FlyThinkerForCausalLM
    from flythinker.train.finetune import load_tokenizer

    tokenizer = load_tokenizer(path)
    reasoner_lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    model = FlyThinkerForCausalLM.from_components(
        generator=path, reasoner=reasoner_lm, dtype=dtype, tokenizer=tokenizer, use_fused_loss=True
    )
    model.to(device)
    reasoner_lm.to(device)
    if model.reasoner is not reasoner_lm.get_decoder():
        raise RuntimeError("the reference reasoner must share the FlyThinker reasoner's backbone")
    return model, reasoner_lm, tokenizer


def encode_features(
    tokenizer, data: str | os.PathLike, records: int, offset: int, max_length: int, max_target_tokens: int
) -> list[dict[str, Any]]:
    """``records`` PEP records from ``offset`` (file order), encoded by ``PromptBuilder``."""
    from flythinker.train.prompts import PromptBuilder
    from flythinker.train.readers import read_records

    rows = read_records(data)[offset : offset + records]
    if len(rows) < records:
        raise ValueError(f"{data} has only {len(rows)} records from offset {offset}; asked for {records}")
    builder = PromptBuilder(tokenizer, max_length=max_length, max_target_tokens=max_target_tokens)
    return [builder.encode(r) for r in rows]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(RESULTS), help="folder for train_<device>.json/.md")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda[:N]")
    parser.add_argument(
        "--data", help="the PEP splits' folder (user_train.jsonl is read) or one LongLaMP-style JSONL file"
    )
    parser.add_argument("--records", type=int, help="records per step (default: 1 on CPU, 8 on CUDA)")
    parser.add_argument("--offset", type=int, default=0, help="index of the first record in the file")
    parser.add_argument(
        "--max-length", type=int, help="PromptBuilder max_length (default: 1024 CPU, 2048 CUDA)"
    )
    parser.add_argument("--max-target-tokens", type=int, default=512, help="PromptBuilder max_target_tokens")
    parser.add_argument(
        "--reference-row-length",
        type=int,
        default=REFERENCE_ROW_LENGTH,
        help="the reference recipe's fixed left-padded row length",
    )
    parser.add_argument("--repeats", type=int, help="measured steps per variant (default: 3 CPU, 5 CUDA)")
    parser.add_argument(
        "--reference-repeats", type=int, help="measured reference steps (default: 1 CPU, 5 CUDA)"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="warm-up rounds (the first also measures memory)"
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS)
    )
    parser.add_argument(
        "--memory-subprocess",
        action="store_true",
        help="also measure each pipeline variant's peak RSS in a fresh child process (CPU)",
    )
    parser.add_argument("--stem", help="result file name without extension (default: train_cpu / train_cuda)")
    parser.add_argument("--child-variant", help=argparse.SUPPRESS)
    parser.add_argument(
        "--host-allocator",
        choices=("reuse", "default"),
        default="reuse",
        help="CPU: 'reuse' tunes glibc malloc to keep freed memory (flythinker.kernels.host_memory, as "
        "`flythinker train` does); 'default' leaves the C library as it is (default: reuse)",
    )
    parser.add_argument(
        "--model", default=None, help="checkpoint for both models (default: SmolLM2-135M-Instruct)"
    )
    return parser.parse_args(argv)


def _settings(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    defaults = DEVICE_DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return {
        "records": args.records,
        "offset": args.offset,
        "max_length": args.max_length,
        "max_target_tokens": args.max_target_tokens,
        "reference_row_length": args.reference_row_length,
        "repeats": args.repeats,
        "reference_repeats": args.reference_repeats,
        "warmup": args.warmup,
        "dtype": "bfloat16" if device.type == "cuda" else "float32",
        "data": str(args.data),
        "optimizer": "AdamW(lr=5e-6, weight_decay=0.025, fused=True) over all parameters (the Trainer default)",
        "memory_method": (
            "torch.cuda.max_memory_allocated"
            if device.type == "cuda"
            else "torch.profiler CPU memory events during the warm-up step + bytes of parameters "
            "and AdamW state (tensor-level peak, allocator caching excluded)"
        ),
    }


def _child(args: argparse.Namespace, variants: Mapping[str, Variant], model, optimizer, device) -> None:
    """``--child-variant``: one step of one variant in this fresh process; prints its peak RSS."""
    variant = variants[args.child_variant]
    supported = reset_peak_rss()
    before = read_rss()
    run_step(variant, optimizer, device)
    peak = read_peak_rss()
    print(
        "CHILD_MEMORY_JSON "
        + json.dumps(
            {
                "peak_rss_bytes": peak,
                "rss_before_bytes": before,
                "rss_increase_bytes": peak - (before or 0),
                "peak_reset_supported": supported,
            }
        ),
        flush=True,
    )


def subprocess_memory(argv: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Run ``--child-variant NAME`` for each name in a fresh interpreter; collect the JSON it prints."""
    out = {}
    base = [a for a in argv if a != "--memory-subprocess"]
    for name in names:
        print(f"memory child: {name}", flush=True)
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), *base, "--child-variant", name],
            capture_output=True,
            text=True,
            check=False,
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("CHILD_MEMORY_JSON ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"memory child {name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        out[name] = json.loads(line.split(" ", 1)[1])
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.data = str(pep_split(args.data, "user_train", "bench/bench_train.py"))
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    settings = _settings(args, device)
    if device.type == "cpu" and args.host_allocator == "reuse":
        from flythinker.kernels.host_memory import host_memory_settings, keep_freed_host_memory

        keep_freed_host_memory()
        settings["host_allocator"] = host_memory_settings() or "default (not glibc)"
    else:
        settings["host_allocator"] = "default"
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    load_before = os.getloadavg()
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.model is None:
        from flythinker.modeling.smollm import smollm2_path

        args.model = str(smollm2_path())
    model, reasoner_lm, tokenizer = load_pair(args.model, dtype, device)
    model.train()
    features = encode_features(
        tokenizer, args.data, args.records, args.offset, args.max_length, args.max_target_tokens
    )
    all_variants = build_variants(
        model,
        reasoner_lm,
        features,
        tokenizer.pad_token_id,
        args.max_length,
        args.reference_row_length,
        device,
    )
    optimizer = make_optimizer(model)
    init_optimizer_state(optimizer)
    if args.child_variant:
        _child(args, all_variants, model, optimizer, device)
        return {}
    print(
        f"{len(features)} record(s), lengths {[len(f['input_ids']) for f in features]}; device {device}; "
        f"load average {load_before}",
        flush=True,
    )
    variants = {n: all_variants[n] for n in VARIANTS if n in names}
    result = measure(model, variants, optimizer, device, args.repeats, args.reference_repeats, args.warmup)
    report: dict[str, Any] = {
        "environment": environment(device),
        "settings": settings,
        "example_lengths": [len(f["input_ids"]) for f in features],
        "example_target_tokens": [sum(x != -100 for x in f["labels"]) for f in features],
    }
    report["summary"] = summarize(
        all_variants,
        {
            **result,
            "samples": {n: result["samples"].get(n, []) for n in all_variants},
            "warmup": {n: result["warmup"].get(n, []) for n in all_variants},
        },
    )
    if args.memory_subprocess and device.type == "cpu":
        del model, reasoner_lm, optimizer, variants, all_variants
        report["subprocess_memory"] = subprocess_memory(argv, [n for n in PIPELINE_VARIANTS if n in names])
    load_after = os.getloadavg()
    report["load_average"] = {
        "before": [round(x, 2) for x in load_before],
        "after": [round(x, 2) for x in load_after],
    }
    if device.type == "cpu":
        report["note"] = (
            "the machine was quiet before the run (1-minute load < 0.5; during it, the benchmark's own "
            "threads count)"
            if load_before[0] < 0.5
            else "other processes shared this machine before the run, so absolute times are noisy; the "
            "interleaved, paired design keeps the ratios comparable"
        )
    report["notes"] = [
        "Same weights, same records, same token content for every variant: the reference re-pads our "
        "PromptBuilder examples to its fixed row length, so its extra cost is the recipe (padding, reasoner "
        "logits + KV caches, eager injection, plain loss), not a different prompt.",
        "On CPU flythinker.kernels.fused_linear_cross_entropy runs its chunked PyTorch step (labelled rows "
        "only, CPU-sized chunks); the Triton step runs on CUDA.",
        "t_reasoner_fwd_bwd excludes the reasoner's AdamW update; the ratio including it is reported too.",
    ]
    stem = args.stem or f"train_{'cuda' if device.type == 'cuda' else 'cpu'}"
    json_path, md_path = write_results(report, args.out, stem)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return report


if __name__ == "__main__":
    main()
