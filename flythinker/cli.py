"""``flythinker train | generate | evaluate | demo | convert``.

Every command writes a run directory (default ``runs/<command>-<timestamp>``) holding the options
it ran with (``options.json``), and its metrics and predictions where it has them. Options and inputs
are validated before anything is written. Every failure prints one line (what, where, what to do)
and exits non-zero; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import flythinker

FINETUNE_HELP = {
    "train_file": "LongLaMP-style training data: .jsonl, .json or .parquet (LongLaMP records or the reference "
    "implementation's {inp, profile, target} records)",
    "output_dir": "run directory: checkpoints/, model/ (loads with from_pretrained), metrics and logs",
    "generator": "generator checkpoint directory (any transformers causal LM), or a saved FlyThinker to continue",
    "reasoner": "reasoner checkpoint directory (default: the generator checkpoint)",
    "method": "'flythinker' (generator + reasoner) or 'sft' (the generator alone: the baseline, same prompts)",
    "task": "LongLaMP task (abstract_generation, product_review, topic_writing, reference); default: detected",
    "max_length": "maximum tokens of one training example; the profile is truncated first",
    "max_target_tokens": "the target is cut to this many tokens (plus the end-of-turn token)",
    "profile_drop": "which profile items go first when the prompt is too long: 'oldest' or 'least_relevant'",
    "packing": "pack several examples per row (position ids restart; the injection is zeroed at each start)",
    "recipe": "training recipe (flythinker.train.recipes): 'default' (the measured best: see "
    "bench/results/quality_cpu.md), 'paper' (the paper's untrained λ injection), or a warm-start variant "
    "(gate_scalar, gate_channel, lambda_warmup, center, zero_linear, gate_center); the options below override it",
    "fusion_lambda": "λ, the weight of the injected reasoner state (paper: 0.5)",
    "fusion_gate": "learned gate c = tanh(α), α = 0 at start: 'none', 'scalar' or 'channel' (default: from --recipe)",
    "center_reasoner": "subtract the mean reasoner state μ (estimated on training batches) before the rescale "
    "(default: from --recipe)",
    "lambda_warmup_steps": "ramp λ from 0 over this many optimizer steps (a fraction in (0, 1): of all steps; "
    "0 = off; default: from --recipe)",
    "center_reasoner_batches": "training batches that estimate μ for --center-reasoner (default: from --recipe)",
    "warm_start_lr_multiplier": "learning-rate multiplier of the gate α / zero_linear W, without weight decay "
    "(default: from --recipe)",
    "projection": "'zero_pad' (h fills the first d_R channels; needs d_R <= d_G), 'linear' (a learned "
    "Linear(d_R, d_G) before the rescale) or 'zero_linear' (a zero-initialised Linear after it); a reasoner "
    "wider than the generator needs one of the last two (default: from --recipe)",
    "norm_eps": "lower bound on the reasoner-state norm ‖h‖ (0 reproduces the paper's equations)",
    "reasoner_mode": "'full' (train the reasoner), 'freeze', or 'lora' (peft LoRA adapters on the reasoner)",
    "lora_generator": "also train the generator through LoRA adapters instead of fully",
    "lora_rank": "LoRA rank r",
    "lora_alpha": "LoRA alpha",
    "learning_rate": "peak learning rate (paper: 5e-6)",
    "weight_decay": "AdamW weight decay (paper: 0.025)",
    "warmup_ratio": "fraction of steps with linear warm-up (paper: 0.01)",
    "num_train_epochs": "epochs (paper: 5); ignored when --max-steps > 0",
    "max_steps": "stop after this many optimizer steps (-1: run the epochs)",
    "global_batch_size": "examples per optimizer step over all processes (paper: 64); gradient accumulation fills it",
    "per_device_batch_size": "examples per forward pass on one process",
    "max_grad_norm": "gradient clipping norm (paper: 1.0)",
    "gradient_checkpointing": "recompute activations in backward to save memory",
    "bf16": "train in bfloat16 mixed precision",
    "seed": "random seed (data order, initialisation of new parameters)",
    "logging_steps": "log loss, learning rate and real tokens/s every this many steps",
    "save_steps": "write a resumable checkpoint every this many steps",
    "save_total_limit": "keep at most this many checkpoints",
    "resume_from_checkpoint": "checkpoint directory to resume from, or 'last' for the newest in output_dir",
    "max_records": "use only the first N training records",
    "attn_implementation": "'sdpa' (default), 'eager' or 'flash_attention_2' (needs flash-attn installed)",
    "use_fused_loss": "compute the loss with the chunked fused linear cross-entropy (never builds [tokens, vocab])",
    "keep_freed_host_memory": "on CPU, tune glibc malloc to reuse freed memory instead of faulting in fresh "
    "pages every step (flythinker.kernels.host_memory; resident memory stays at its peak)",
    "overwrite": "replace a run directory that already holds a run (default: refuse, so no run is lost)",
}


def _timestamped(command: str) -> str:
    return str(Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}")


def _write_options(run_dir: Path, options: dict[str, Any]) -> None:
    from flythinker.train.checkpoints import atomic_write_text

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "options.json", json.dumps(options, indent=2, default=str))


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _add_dataclass_options(parser: argparse.ArgumentParser, cls, helps: dict[str, str], skip=()) -> None:
    """One ``--option`` per dataclass field, with its default and help text."""
    for item in dataclasses.fields(cls):
        if item.name in skip or item.name == "extra":
            continue
        flag = "--" + item.name.replace("_", "-")
        default = item.default if item.default is not dataclasses.MISSING else None
        required = item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
        kind = {"int": int, "float": float, "bool": _bool}.get(
            str(item.type).split(" ")[0].replace("|", "").strip()
        )
        if kind is None:
            kind = (
                int
                if isinstance(default, int) and not isinstance(default, bool)
                else (float if isinstance(default, float) else (_bool if isinstance(default, bool) else str))
            )
        flag_kwargs = {"nargs": "?", "const": True} if kind is _bool else {}  # `--packing` alone means true
        parser.add_argument(
            flag,
            dest=item.name,
            type=kind,
            default=default,
            required=required,
            **flag_kwargs,
            help=f"{helps.get(item.name, item.name)} (default: {default})",
        )


# ------------------------------------------------------------------------------------------ train
def _cmd_train(args: argparse.Namespace) -> int:
    from flythinker.train.finetune import FinetuneConfig, run_finetune

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig) if f.name != "extra"}
    config = FinetuneConfig(**values)
    metrics = run_finetune(config, options=values)  # writes options.json once everything is validated
    print(json.dumps(metrics, indent=2))
    return 0


# --------------------------------------------------------------------------------------- generate
def _cmd_generate(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    import flythinker.modeling  # noqa: F401  (registers the architecture)
    from flythinker.modeling.loading import check_model_source
    from flythinker.predict import PredictionLog, PredictionSettings, generate_predictions
    from flythinker.train.checkpoints import atomic_write_text
    from flythinker.train.divergence import non_finite_parameter
    from flythinker.train.finetune import load_tokenizer
    from flythinker.train.prompts import PromptBuilder
    from flythinker.train.readers import read_records

    settings = PredictionSettings(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        batch_size=args.batch_size,
        schedule=args.schedule,
    )
    settings.validate()
    if args.max_target_tokens >= args.max_length:
        raise ValueError(
            f"--max-target-tokens ({args.max_target_tokens}) must be < --max-length ({args.max_length})"
        )
    check_model_source(args.model, "--model")
    run_dir = Path(args.run_dir or _timestamped("generate"))
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"--run-dir {run_dir}: is a file; expected a (new) run directory")
    if not Path(args.data).exists():
        raise FileNotFoundError(f"--data {args.data}: no such file")
    records = read_records(args.data, task=args.task, require_target=False)[: args.max_records]
    if not records:
        raise ValueError(f"--data {args.data}: holds no records; nothing to generate for")
    options = {k: v for k, v in vars(args).items() if k not in ("func", "debug", "overwrite", "run_dir")}
    log = PredictionLog(run_dir / "predictions.jsonl", records)
    done = _resume_point(run_dir, options, log, overwrite=args.overwrite)
    tokenizer = _loading("--model", args.model, lambda: load_tokenizer(args.model))
    model = _loading(
        "--model",
        args.model,
        lambda: AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).eval(),
    )
    bad = non_finite_parameter(model)
    if bad is not None:
        raise ValueError(
            f"--model {args.model}: weight {bad} holds NaN/inf (a diverged training run); use an earlier "
            "checkpoint"
        )
    builder = PromptBuilder(tokenizer, max_length=args.max_length, max_target_tokens=args.max_target_tokens)

    # ---- nothing was written before this line
    _write_options(run_dir, {**options, "run_dir": str(run_dir)})
    if done:
        print(
            f"resuming {run_dir}: {done} of {len(records)} predictions were already written", file=sys.stderr
        )
    rows, stats = generate_predictions(
        model, tokenizer, records, builder, settings, done=done, on_batch=log.append
    )
    stats["records"] = len(records)
    atomic_write_text(
        run_dir / "generation_stats.json", json.dumps(stats, indent=2)
    )  # written last: finished
    print(
        f"wrote {len(rows)} predictions to {run_dir / 'predictions.jsonl'} ({len(records)} in all; "
        f"{stats['tokens_per_second']} tokens/s)"
    )
    return 0


def _resume_point(run_dir: Path, options: dict[str, Any], log, overwrite: bool) -> int:
    """How many predictions an interrupted run with the same options already wrote (0 for a new run).

    A finished run (``generation_stats.json``) or one with other options is refused unless ``overwrite``.
    """
    if overwrite:
        for name in ("predictions.jsonl", "generation_stats.json", "options.json"):
            (run_dir / name).unlink(missing_ok=True)
        return 0
    if not (run_dir / "predictions.jsonl").exists():
        return 0
    if (run_dir / "generation_stats.json").exists():
        raise FileExistsError(
            f"--run-dir {run_dir}: already holds a finished generation run; choose a new directory "
            "or pass --overwrite to replace it"
        )
    try:
        previous = json.loads((run_dir / "options.json").read_text())
    except (OSError, ValueError):
        previous = None
    if previous is not None:
        previous.pop("run_dir", None)
        changed = sorted(k for k in set(previous) | set(options) if previous.get(k) != options.get(k))
        if changed:
            raise ValueError(
                f"--run-dir {run_dir}: holds an interrupted run with other options ({', '.join(changed)}); "
                "rerun with the same options to resume it, or pass --overwrite to start again"
            )
    return log.resume()


def _loading(option: str, value: str, load):
    """Run ``load()``; any failure becomes one line naming the option, the path and the cause."""
    from flythinker.modeling.loading import CheckpointMismatchError

    try:
        return load()
    except CheckpointMismatchError:
        raise
    except Exception as error:  # noqa: BLE001 - transformers/safetensors raise many types
        raise ValueError(f"{option} {value}: cannot load it: {_one_line(error)}{_hint(error)}") from error


def _hint(error: BaseException) -> str:
    text = f"{type(error).__name__} {error}".lower()
    if "safetensor" in text or "deserializ" in text or "header" in text:
        return " (the weights file is truncated or corrupt: save or copy it again)"
    if "json" in text:
        return " (a JSON file of the model directory is corrupt: restore it from the original model)"
    if "tokenizer" in text:
        return " (the directory has no usable tokenizer files: save the tokenizer next to the model)"
    return ""


# --------------------------------------------------------------------------------------- evaluate
def _cmd_evaluate(args: argparse.Namespace) -> int:
    from flythinker.evaluation import (
        compute_metrics,
        metrics_by_position,
        read_predictions_jsonl,
        write_metrics_json,
    )

    rows = read_predictions_jsonl(args.predictions)
    if not rows:
        raise ValueError(
            f"--predictions {args.predictions}: holds no predictions (an empty file); run "
            "`flythinker generate` first, or check the path"
        )
    for number, row in enumerate(rows, 1):
        for field in ("prediction", "reference"):
            if not isinstance(row.get(field), str):
                raise ValueError(
                    f"{args.predictions} record {number}: field {field!r} must be a string, "
                    f"got {type(row.get(field)).__name__}"
                )
    predictions = [row["prediction"] for row in rows]
    references = [row["reference"] for row in rows]
    metrics = compute_metrics(predictions, references, metrics=tuple(args.metrics))
    metrics["by_position"] = metrics_by_position(predictions, references, window_words=args.window_words)
    output = Path(args.output or Path(args.predictions).with_name("metrics.json"))
    write_metrics_json(output, metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k != "by_position"}, indent=2))
    print(f"metrics written to {output}")
    return 0


# ------------------------------------------------------------------------------------------- demo
def _cmd_demo(args: argparse.Namespace) -> int:
    from flythinker.demo import DemoOptions, run_demo

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(DemoOptions)}
    run_demo(DemoOptions(**values))
    return 0


# ---------------------------------------------------------------------------------------- convert
def _cmd_convert(args: argparse.Namespace) -> int:
    from flythinker.modeling.conversion import convert_reference_checkpoint

    for option, value in (
        ("--checkpoint", args.checkpoint),
        ("--reasoner-config", args.reasoner_config),
        ("--tokenizer", args.tokenizer),
    ):
        if value is not None and not Path(value).is_dir():
            state = "is a file" if Path(value).exists() else "no such directory"
            raise FileNotFoundError(f"{option} {value}: {state}; expected a directory")
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise NotADirectoryError(f"--output {args.output}: is a file; expected a (new) directory")
    convert_reference_checkpoint(
        args.checkpoint,
        args.output,
        reasoner_config=args.reasoner_config,
        fusion_lambda=args.fusion_lambda,
        projection=args.projection,
        tokenizer=args.tokenizer,
    )
    print(f"converted {args.checkpoint} -> {args.output}")
    return 0


DEMO_HELP = {
    "output_dir": "run directory for data, checkpoints, predictions and metrics",
    "steps": "optimizer steps for each of FlyThinker and the SFT baseline",
    "batch_size": "examples per optimizer step",
    "learning_rate": "peak learning rate (higher than the paper's 5e-6 because the demo is short)",
    "max_length": "maximum tokens per training example",
    "max_target_tokens": "target tokens kept per example",
    "max_new_tokens": "tokens generated per held-out request",
    "n_users": "number of synthetic users (each writes in one personal style)",
    "reasoner_mode": "'full', 'freeze' or 'lora' (see `flythinker train --help`)",
    "recipe": "FlyThinker's training recipe (see `flythinker train --help`); 'paper' = the untrained λ injection",
    "fusion_lambda": "λ (paper: 0.5); at λ=0.5 the untrained injection raises SmolLM2's loss from ~3 to ~9 nats",
    "seed": "random seed",
}


def build_parser() -> argparse.ArgumentParser:
    from flythinker.demo import DemoOptions
    from flythinker.train.finetune import FinetuneConfig

    parser = argparse.ArgumentParser(prog="flythinker", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"flythinker {flythinker.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="fine-tune FlyThinker or the SFT baseline (transformers Trainer; "
        "run under `accelerate launch` for DDP/FSDP/DeepSpeed)",
    )
    _add_dataclass_options(train, FinetuneConfig, FINETUNE_HELP)
    train.set_defaults(func=_cmd_train)

    gen = sub.add_parser("generate", help="generate predictions for LongLaMP-style records")
    gen.add_argument("--model", required=True, help="saved model directory (FlyThinker or any causal LM)")
    gen.add_argument("--data", required=True, help="records to generate for (.jsonl/.json/.parquet)")
    gen.add_argument("--task", default=None, help="LongLaMP task; default: detected from the profile fields")
    gen.add_argument("--run-dir", default=None, help="output directory (default: runs/generate-<time>)")
    gen.add_argument(
        "--max-records", type=_int_at_least(1), default=None, help="generate for the first N records only"
    )
    gen.add_argument(
        "--max-length",
        type=_int_at_least(8),
        default=2048,
        help="prompt budget as in training (default: 2048)",
    )
    gen.add_argument(
        "--max-target-tokens",
        type=_int_at_least(1),
        default=512,
        help="target budget reserved as in training, so prompts match (default: 512)",
    )
    gen.add_argument(
        "--max-new-tokens", type=_int_at_least(1), default=256, help="tokens to generate (default: 256)"
    )
    gen.add_argument(
        "--batch-size", type=_int_at_least(1), default=8, help="prompts decoded together (default: 8)"
    )
    gen.add_argument(
        "--do-sample",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="sample instead of greedy (default: false)",
    )
    gen.add_argument(
        "--temperature", type=_finite_float, default=1.0, help="sampling temperature (default: 1.0)"
    )
    gen.add_argument("--top-k", type=_int_at_least(0), default=0, help="top-k sampling, 0 = off (default: 0)")
    gen.add_argument(
        "--top-p", type=_finite_float, default=1.0, help="nucleus sampling mass (default: 1.0 = off)"
    )
    gen.add_argument(
        "--repetition-penalty", type=_finite_float, default=1.0, help="repetition penalty (default: 1.0)"
    )
    gen.add_argument("--seed", type=_int_at_least(0), default=0, help="sampling seed (default: 0)")
    gen.add_argument(
        "--schedule",
        default="sequential",
        help="FlyThinker decoding schedule: 'sequential' (default; best batched throughput on a 2-core CPU), "
        "'concurrent' (lower per-token latency at small batch), 'threads', 'processes' or 'hf' "
        "(transformers generate)",
    )
    gen.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="float32, bfloat16 or float16 (default: float32)",
    )
    gen.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the predictions of a finished or different run in --run-dir (default: an "
        "interrupted run with the same options resumes; anything else is refused)",
    )
    gen.set_defaults(func=_cmd_generate)

    ev = sub.add_parser("evaluate", help="ROUGE-1/L, METEOR, BLEU and metrics by output position")
    ev.add_argument(
        "--predictions", required=True, help="predictions.jsonl with 'prediction' and 'reference'"
    )
    ev.add_argument(
        "--output", default=None, help="metrics JSON (default: metrics.json next to the predictions)"
    )
    ev.add_argument(
        "--metrics",
        nargs="+",
        default=["rouge1", "rougeL", "meteor", "bleu"],
        help="metrics to compute (default: rouge1 rougeL meteor bleu)",
    )
    ev.add_argument(
        "--window-words",
        type=_int_at_least(1),
        default=50,
        help="window size in words for the by-position (context drift) analysis (default: 50)",
    )
    ev.set_defaults(func=_cmd_evaluate)

    demo = sub.add_parser(
        "demo",
        help="the embedded default: FlyThinker vs SFT on SmolLM2-135M and synthetic "
        "personalized data (~10 minutes on 2 CPU cores)",
    )
    _add_dataclass_options(demo, DemoOptions, DEMO_HELP)
    demo.set_defaults(func=_cmd_demo)

    conv = sub.add_parser(
        "convert", help="convert a reference-implementation checkpoint (Generator./Reasoner.)"
    )
    conv.add_argument(
        "--checkpoint", required=True, help="directory with the state dict and generator config.json"
    )
    conv.add_argument("--output", required=True, help="output directory (config.json + model.safetensors)")
    conv.add_argument(
        "--reasoner-config",
        default=None,
        help="the reasoner's base checkpoint directory (default: the generator's config)",
    )
    conv.add_argument(
        "--tokenizer",
        default=None,
        help="directory of the tokenizer to save with the model (default: the first of --checkpoint and "
        "--reasoner-config whose tokenizer encodes text)",
    )
    conv.add_argument(
        "--fusion-lambda", type=_finite_float, default=0.5, help="λ of the converted model (default: 0.5)"
    )
    conv.add_argument(
        "--projection",
        default="zero_pad",
        choices=("zero_pad", "linear"),
        help="'zero_pad' (default) or 'linear'",
    )
    conv.set_defaults(func=_cmd_convert)
    from flythinker.evaluation.alpsbench.cli import add_subparser as add_alpsbench_subparser

    add_alpsbench_subparser(sub)  # `flythinker alpsbench run | score`
    return parser


def _add_debug_flags(parser: argparse.ArgumentParser) -> None:
    """``--debug`` before or after the command name."""
    text = "on an error, also print the Python traceback"
    parser.add_argument("--debug", action="store_true", help=text)
    for sub in parser._subparsers._group_actions[0].choices.values():
        if not any("--debug" in action.option_strings for action in sub._actions):
            sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=text)


def _one_line(error: BaseException, limit: int = 800) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Errors about the user's inputs (exit 2); anything else is reported the same way with its type (exit 1).
_INPUT_ERRORS = (ValueError, TypeError, OSError, KeyError, ImportError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _add_debug_flags(parser)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"flythinker {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - every failure becomes one readable line
        if getattr(args, "debug", False):
            traceback.print_exc()
        known = isinstance(error, _INPUT_ERRORS)
        kind = "" if known and type(error).__module__ == "builtins" else f"{type(error).__name__}: "
        tail = "" if getattr(args, "debug", False) else " (rerun with --debug for the traceback)"
        tail = tail if not known or kind else ""
        sys.stderr.flush()  # start on a fresh line even after an unfinished progress bar
        print(f"\nflythinker {args.command}: error: {kind}{_one_line(error)}{tail}", file=sys.stderr)
        return 2 if known else 1


if __name__ == "__main__":
    sys.exit(main())
