"""A fine-tuning run's output directory: where checkpoints go, when a directory may be reused, what
``--resume-from-checkpoint last`` resolves to, and loading a checkpoint that is already the last step.

Layout: ``<output_dir>/checkpoints/checkpoint-N`` (complete checkpoints only: they are staged in
``checkpoints/.in-progress`` and renamed into place), ``model/`` and the run files, of which
``train_metrics.json`` (:data:`FINISHED_MARKER`) is written last.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .checkpoints import complete_checkpoints, last_complete_checkpoint

if TYPE_CHECKING:
    from .finetune_config import FinetuneConfig

logger = logging.getLogger(__name__)

FINISHED_MARKER = "train_metrics.json"
"""Written last by a finished run."""
RUN_FILES = ("options.json", "finetune_config.json", "provenance.json", FINISHED_MARKER, "log_history.json")


def checkpoints_dir(config: FinetuneConfig) -> Path:
    """Where complete checkpoints live: ``<output_dir>/checkpoints``."""
    return Path(config.output_dir) / "checkpoints"


def staging_dir(config: FinetuneConfig) -> Path:
    """Where the Trainer writes a checkpoint before it is renamed into :func:`checkpoints_dir`."""
    return checkpoints_dir(config) / ".in-progress"


def check_run_directory(config: FinetuneConfig) -> None:
    """Refuse to reuse a directory holding another run unless resuming it or ``overwrite`` is set."""
    out = Path(config.output_dir)
    if config.overwrite or config.resume_from_checkpoint is not None or not out.is_dir():
        return
    finished = (out / FINISHED_MARKER).exists() or (out / "model").exists()
    started = bool(complete_checkpoints(checkpoints_dir(config)))
    if finished or started:
        state = "a finished run" if finished else "checkpoints of an unfinished run"
        raise FileExistsError(
            f"--output-dir {out}: already holds {state}; choose a new directory, continue it with "
            "--resume-from-checkpoint last, or pass --overwrite true to replace it"
        )


def clear_run_directory(config: FinetuneConfig) -> None:
    """Remove a previous run's model, checkpoints and run files (``--overwrite true``); other files stay."""
    out = Path(config.output_dir)
    for name in ("model", "checkpoints"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def resolve_resume(config: FinetuneConfig) -> str | None:
    """The checkpoint to resume from: the given path, the newest intact one for ``"last"`` (a warning names
    each newer damaged one passed over; None, with a warning, when there is none), or None.

    ``last`` in a directory holding a finished run but no checkpoint is refused (it would start again from
    step 0 and replace the finished model)."""
    if config.resume_from_checkpoint != "last":
        return config.resume_from_checkpoint
    skipped: list[str] = []
    last = last_complete_checkpoint(checkpoints_dir(config), skipped)
    for reason in skipped:
        logger.warning("--resume-from-checkpoint last: skipping %s", reason)
    if last is None:
        out = Path(config.output_dir)
        if (out / FINISHED_MARKER).exists() or (out / "model").exists():
            raise FileExistsError(
                f"--resume-from-checkpoint last: {out} holds a finished run and no intact checkpoint to continue; "
                "choose a new --output-dir, or pass --overwrite true (instead of --resume-from-checkpoint) to "
                "replace it"
            )
        logger.warning(
            "--resume-from-checkpoint last: no complete checkpoint in %s; starting from step 0",
            checkpoints_dir(config),
        )
        return None
    logger.info("resuming from %s", last)
    return str(last)


def checkpoint_is_final(checkpoint: Path, args) -> bool:
    """Whether ``checkpoint`` already holds the run's last step (``args.max_steps`` or its own target)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    target = args.max_steps if args.max_steps > 0 else state.get("max_steps", 0)
    return bool(target) and state.get("global_step", 0) >= target


def load_final_checkpoint(model, checkpoint: Path, trainer) -> dict[str, Any]:
    """Load a checkpoint's weights (all shards) and Trainer state instead of training; returns its metrics."""
    from safetensors.torch import load_file
    from transformers import TrainerState

    index = checkpoint / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.exists()
        else ["model.safetensors"]
    )
    state_dict: dict[str, torch.Tensor] = {}
    for name in files:
        state_dict.update(load_file(str(checkpoint / name)))
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint}: weights do not match the model (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}); resume from another checkpoint"
        )
    model.tie_weights()
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    logger.info("%s is the final step: loaded it instead of training", checkpoint)
    final = [entry for entry in trainer.state.log_history if "train_loss" in entry]
    return dict(final[-1]) if final else {}
