"""``flythinker demo``: FlyThinker vs SFT on SmolLM2-135M and synthetic personalized data."""

from __future__ import annotations

import argparse
import dataclasses

from .common import add_dataclass_options

DEMO_HELP = {
    "output_dir": "run directory for data, checkpoints, predictions and metrics",
    "steps": "optimizer steps for each of FlyThinker and the SFT baseline",
    "batch_size": "examples per optimizer step",
    "learning_rate": "peak learning rate (higher than the paper's 5e-6 because the demo is short)",
    "max_length": "maximum tokens per training example",
    "max_target_tokens": "target tokens kept per example",
    "max_new_tokens": "tokens generated per held-out request",
    "n_users": "number of synthetic users (each writes in one personal style)",
    "reasoner_mode": "'full', 'freeze' or 'lora' (default: the recipe's; see `flythinker train --help`)",
    "recipe": "FlyThinker's training recipe (see `flythinker train --help`); 'paper' = the untrained λ injection",
    "fusion_lambda": "λ (paper: 0.5); at λ=0.5 the untrained injection raises SmolLM2's loss from ~3 to ~9 nats",
    "seed": "random seed",
}


def run(args: argparse.Namespace) -> int:
    from flythinker.demo import DemoOptions, run_demo

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(DemoOptions)}
    run_demo(DemoOptions(**values))
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    """Register the command on the ``flythinker`` subparsers."""
    from flythinker.demo import DemoOptions

    demo = sub.add_parser(
        "demo",
        help="the embedded default: FlyThinker vs SFT on SmolLM2-135M and synthetic "
        "personalized data (~10 minutes on 2 CPU cores)",
    )
    add_dataclass_options(demo, DemoOptions, DEMO_HELP)
    demo.set_defaults(func=run)
    return demo
