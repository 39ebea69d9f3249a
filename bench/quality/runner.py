"""One quality run = one ``flythinker train`` run (``run_finetune``, the CLI's own code path) + measurements.

The run's :class:`~flythinker.train.finetune.FinetuneConfig` is built from the arm and the experiment's
options by :func:`finetune_config`; :func:`cli_argv` writes the equivalent ``flythinker train`` command
line (saved with every run, and tested to give the same per-step losses). Measurements come from a
:class:`~bench.quality.measure.MeasureCallback` and a control, if the arm has one, from a
:class:`~bench.quality.controls.ControlCallback`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from flythinker.train.finetune import FinetuneConfig, run_finetune

from .arms import Arm
from .controls import ConstantState, ControlCallback, Donor, OwnEmbedding
from .measure import MeasureCallback

__all__ = ["RunSpec", "finetune_config", "cli_argv", "run_arm"]


@dataclasses.dataclass
class RunSpec:
    """What one run needs besides the arm: paths and the shared training options."""

    train_file: str
    generator: str
    reasoner: str
    work_dir: str
    steps: int
    batch_size: int
    max_length: int
    max_target_tokens: int
    weight_decay: float = 0.025
    warmup_ratio: float = 0.01
    max_grad_norm: float = 1.0
    fusion_lambda: float = 0.5
    max_records: int | None = None


def finetune_config(
    arm: Arm, spec: RunSpec, seed: int, learning_rate: float, output_dir: str
) -> FinetuneConfig:
    """The FinetuneConfig of one run (what ``flythinker train`` would run)."""
    values: dict[str, Any] = {
        "train_file": spec.train_file,
        "output_dir": output_dir,
        "generator": spec.generator,
        "method": arm.method,
        "max_length": spec.max_length,
        "max_target_tokens": spec.max_target_tokens,
        "learning_rate": learning_rate,
        "weight_decay": spec.weight_decay,
        "warmup_ratio": spec.warmup_ratio,
        "max_steps": spec.steps,
        "global_batch_size": spec.batch_size,
        "per_device_batch_size": spec.batch_size,
        "max_grad_norm": spec.max_grad_norm,
        "seed": seed,
        "save_steps": spec.steps + 1,  # no intermediate checkpoint: the final model is saved as usual
        "max_records": spec.max_records,
    }
    if arm.method == "flythinker":
        values.update(
            reasoner=spec.reasoner,
            recipe=arm.recipe,
            fusion_lambda=spec.fusion_lambda,
            reasoner_mode="freeze",
        )
    values.update(arm.overrides)
    return FinetuneConfig(**values)


def cli_argv(config: FinetuneConfig) -> list[str]:
    """``flythinker train`` arguments that give ``config`` (every field that differs from the default)."""
    default = FinetuneConfig(train_file="", output_dir="", generator="")
    argv = ["train"]
    for field in dataclasses.fields(FinetuneConfig):
        value = getattr(config, field.name)
        required = field.name in ("train_file", "output_dir", "generator")
        if field.name == "extra" or (
            not required and (value is None or value == getattr(default, field.name))
        ):
            continue
        argv += [
            "--" + field.name.replace("_", "-"),
            str(value).lower() if isinstance(value, bool) else str(value),
        ]
    return argv


def run_arm(
    arm: Arm,
    spec: RunSpec,
    seed: int,
    learning_rate: float,
    measure: MeasureCallback,
    control: Donor | ConstantState | OwnEmbedding | None = None,
    keep_output: bool = False,
) -> dict[str, Any]:
    """Train one (arm, seed, learning rate) through ``run_finetune``; return the run's record."""
    output_dir = Path(spec.work_dir, f"{arm.name}-seed{seed}-lr{learning_rate:g}")
    shutil.rmtree(output_dir, ignore_errors=True)
    config = finetune_config(arm, spec, seed, learning_rate, str(output_dir))
    argv = cli_argv(config)
    installer = ControlCallback(control) if control is not None else None
    load_before = os.getloadavg()
    begin, cpu_begin = time.perf_counter(), time.process_time()
    callbacks = [measure] if installer is None else [installer, measure, installer.off()]
    metrics = run_finetune(config, callbacks=callbacks)
    wall, cpu = time.perf_counter() - begin, time.process_time() - cpu_begin
    history = json.loads((output_dir / "log_history.json").read_text())
    if not keep_output:
        shutil.rmtree(output_dir, ignore_errors=True)
    return {
        "arm": arm.name,
        "seed": seed,
        "learning_rate": learning_rate,
        "config": dataclasses.asdict(config),
        "cli": "flythinker " + " ".join(argv),
        "train_loss": [h["loss"] for h in history if "loss" in h],
        "grad_norm": [h.get("grad_norm") for h in history if "loss" in h],
        "trainable_parameters": metrics.get("trainable_parameters"),
        **measure.record,
        "seconds": {**measure.record["seconds"], "wall": wall, "cpu": cpu},
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
    }
