"""Fine-tuning runs on the tiny workspace of tests/train/conftest.py: a FinetuneConfig or the matching
``flythinker train`` argv, with only the values a test changes spelled out by the test."""

from __future__ import annotations

from typing import Any

from flythinker.train.finetune import FinetuneConfig


def _paths(workspace, output_dir) -> dict[str, str]:
    root = workspace["root"]
    return {
        "train_file": workspace["train"],
        "output_dir": str(output_dir),
        "generator": str(root / "generator"),
        "reasoner": str(root / "reasoner"),
    }


def workspace_config(workspace, output_dir, **options: Any) -> FinetuneConfig:
    """``FinetuneConfig`` over the workspace's data and models, tiny lengths, lr 1e-3, no warm-up."""
    values = {"max_length": 256, "learning_rate": 1e-3, "warmup_ratio": 0.0, "per_device_batch_size": 1}
    return FinetuneConfig(**{**_paths(workspace, output_dir), **values, **options})


def train_argv(workspace, output_dir, *extra: str, **options: Any) -> list[str]:
    """``flythinker train`` arguments: the workspace's paths, then ``--option value`` per keyword, then ``extra``."""
    argv = ["train"]
    for name, value in {**_paths(workspace, output_dir), "max_length": 256, **options}.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    return [*argv, *extra]
