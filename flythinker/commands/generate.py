"""``flythinker generate``: predictions for LongLaMP-style records, resumable in its run directory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .common import finite_float, int_at_least, one_line, parse_bool, timestamped, write_options


def run(args: argparse.Namespace) -> int:
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
    from flythinker.train.reasoner_context import ReasonerContextBuilder

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
    run_dir = Path(args.run_dir or timestamped("generate"))
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
        lambda: _load_model(AutoModelForCausalLM, args.model, getattr(torch, args.dtype)),
    )
    bad = non_finite_parameter(model)
    if bad is not None:
        raise ValueError(
            f"--model {args.model}: weight {bad} holds NaN/inf (a diverged training run); use an earlier "
            "checkpoint"
        )
    builder = PromptBuilder(
        tokenizer,
        max_length=args.max_length,
        max_target_tokens=args.max_target_tokens,
        profile_tokens=args.profile_tokens,
    )
    if getattr(model.config, "reasoner_context", False):  # the reasoner reads the profile
        if args.profile_tokens is None:
            raise ValueError(
                f"--model {args.model} was trained with reasoner_context: pass --profile-tokens as in training "
                "(the generator's share of the profile, e.g. 0)"
            )
        builder = ReasonerContextBuilder(builder)

    # ---- nothing was written before this line
    write_options(run_dir, {**options, "run_dir": str(run_dir)})
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


def _load_model(auto_class, path: str, dtype):
    """The model at ``path``, its stored dtypes checked against its parameters (a relabelled file fails)."""
    from flythinker.modeling.loading import check_stored_dtypes

    model = auto_class.from_pretrained(path, dtype=dtype).eval()
    check_stored_dtypes(path, model)
    return model


def _resume_point(run_dir: Path, options: dict[str, Any], log, overwrite: bool) -> int:
    """How many predictions an interrupted run with the same options already wrote (0 for a new run).

    A finished run (``generation_stats.json``) or one with other options is refused unless ``overwrite``;
    a ``predictions.jsonl`` without the ``options.json`` every generate run writes first is someone else's
    file: refused, and never deleted, even with ``overwrite``.
    """
    if (run_dir / "predictions.jsonl").exists() and not (run_dir / "options.json").exists():
        raise FileExistsError(
            f"--run-dir {run_dir}: holds a predictions.jsonl that no `flythinker generate` run wrote (there is no "
            "options.json next to it); choose another --run-dir (this file is left as it is)"
        )
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
        raise ValueError(f"{option} {value}: cannot load it: {one_line(error)}{_hint(error)}") from error


def _hint(error: BaseException) -> str:
    text = f"{type(error).__name__} {error}".lower()
    if "ignore_mismatched_sizes" in text:
        return (
            " (a weight's shape differs from config.json: the weights and the config belong to different "
            "models; restore the model directory)"
        )
    if "safetensor" in text or "deserializ" in text or "header" in text:
        return " (the weights file is truncated or corrupt: save or copy it again)"
    if "json" in text:
        return " (a JSON file of the model directory is corrupt: restore it from the original model)"
    if "tokenizer" in text:
        return " (the directory has no usable tokenizer files: save the tokenizer next to the model)"
    return ""


def add_parser(sub) -> argparse.ArgumentParser:
    """Register the command on the ``flythinker`` subparsers."""
    gen = sub.add_parser("generate", help="generate predictions for LongLaMP-style records")
    gen.add_argument("--model", required=True, help="saved model directory (FlyThinker or any causal LM)")
    gen.add_argument("--data", required=True, help="records to generate for (.jsonl/.json/.parquet)")
    gen.add_argument("--task", default=None, help="LongLaMP task; default: detected from the profile fields")
    gen.add_argument("--run-dir", default=None, help="output directory (default: runs/generate-<time>)")
    gen.add_argument(
        "--max-records", type=int_at_least(1), default=None, help="generate for the first N records only"
    )
    gen.add_argument(
        "--max-length",
        type=int_at_least(8),
        default=2048,
        help="prompt budget as in training (default: 2048)",
    )
    gen.add_argument(
        "--max-target-tokens",
        type=int_at_least(1),
        default=512,
        help="target budget reserved as in training, so prompts match (default: 512)",
    )
    gen.add_argument(
        "--max-new-tokens", type=int_at_least(1), default=256, help="tokens to generate (default: 256)"
    )
    gen.add_argument(
        "--profile-tokens",
        type=int_at_least(0),
        default=None,
        help="at most this many profile tokens in the generator's prompt, as in training (required for "
        "reasoner_context models; default: as many as fit)",
    )
    gen.add_argument(
        "--batch-size", type=int_at_least(1), default=8, help="prompts decoded together (default: 8)"
    )
    gen.add_argument(
        "--do-sample",
        type=parse_bool,
        nargs="?",
        const=True,
        default=False,
        help="sample instead of greedy (default: false)",
    )
    gen.add_argument(
        "--temperature", type=finite_float, default=1.0, help="sampling temperature (default: 1.0)"
    )
    gen.add_argument("--top-k", type=int_at_least(0), default=0, help="top-k sampling, 0 = off (default: 0)")
    gen.add_argument(
        "--top-p", type=finite_float, default=1.0, help="nucleus sampling mass (default: 1.0 = off)"
    )
    gen.add_argument(
        "--repetition-penalty", type=finite_float, default=1.0, help="repetition penalty (default: 1.0)"
    )
    gen.add_argument("--seed", type=int_at_least(0), default=0, help="sampling seed (default: 0)")
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
    gen.set_defaults(func=run)
    return gen
