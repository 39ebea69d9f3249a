"""``flythinker train | generate | evaluate | demo | convert | alpsbench``.

Every command writes a run directory (default ``runs/<command>-<timestamp>``) holding the options
it ran with (``options.json``), and its metrics and predictions where it has them. Options and inputs
are validated before anything is written. Every failure prints one line (what, where, what to do)
and exits non-zero; ``--debug`` adds the traceback. Each command lives in its own module of
:mod:`flythinker.commands`; this module builds the parser and runs one.
"""

from __future__ import annotations

import argparse
import sys
import traceback

import flythinker
from flythinker.commands import convert, demo, evaluate, generate, train
from flythinker.commands.common import one_line
from flythinker.commands.train import FINETUNE_HELP  # noqa: F401  (where a model option's help goes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flythinker", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"flythinker {flythinker.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (train, generate, evaluate, demo, convert):
        command.add_parser(sub)
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
        print(f"\nflythinker {args.command}: error: {kind}{one_line(error)}{tail}", file=sys.stderr)
        return 2 if known else 1


if __name__ == "__main__":
    sys.exit(main())
