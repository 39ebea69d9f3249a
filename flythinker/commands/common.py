"""What every ``flythinker`` command shares: option parsers, one ``--option`` per dataclass field, the
default run directory and ``options.json``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any


def timestamped(command: str) -> str:
    return str(Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}")


def write_options(run_dir: Path, options: dict[str, Any]) -> None:
    from flythinker.train.checkpoints import atomic_write_text

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "options.json", json.dumps(options, indent=2, default=str))


def int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_dataclass_options(parser: argparse.ArgumentParser, cls, helps: dict[str, str], skip=()) -> None:
    """One ``--option`` per dataclass field, with its default and help text."""
    for item in dataclasses.fields(cls):
        if item.name in skip or item.name == "extra":
            continue
        flag = "--" + item.name.replace("_", "-")
        default = item.default if item.default is not dataclasses.MISSING else None
        required = item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
        kind = {"int": int, "float": float, "bool": parse_bool}.get(
            str(item.type).split(" ")[0].replace("|", "").strip()
        )
        if kind is None:
            kind = (
                int
                if isinstance(default, int) and not isinstance(default, bool)
                else (
                    float
                    if isinstance(default, float)
                    else (parse_bool if isinstance(default, bool) else str)
                )
            )
        flag_kwargs = (
            {"nargs": "?", "const": True} if kind is parse_bool else {}
        )  # `--packing` alone means true
        parser.add_argument(
            flag,
            dest=item.name,
            type=kind,
            default=default,
            required=required,
            **flag_kwargs,
            help=f"{helps.get(item.name, item.name)} (default: {default})",
        )


def one_line(error: BaseException, limit: int = 800) -> str:
    """An error's message on one line (at most ``limit`` characters)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
