"""``flythinker convert``: a reference-implementation checkpoint (Generator./Reasoner.) to a FlyThinker."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import finite_float


def run(args: argparse.Namespace) -> int:
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


def add_parser(sub) -> argparse.ArgumentParser:
    """Register the command on the ``flythinker`` subparsers."""
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
        "--fusion-lambda", type=finite_float, default=0.5, help="λ of the converted model (default: 0.5)"
    )
    conv.add_argument(
        "--projection",
        default="zero_pad",
        choices=("zero_pad", "linear"),
        help="'zero_pad' (default) or 'linear'",
    )
    conv.set_defaults(func=run)
    return conv
