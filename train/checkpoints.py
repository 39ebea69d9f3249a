"""Atomic, resumable checkpoints for the transformers Trainer.

The Trainer writes each checkpoint into a staging folder; :class:`AtomicCheckpoints` (``on_save``)
writes :data:`COMPLETE_MARKER` last and renames the folder into ``checkpoints/checkpoint-N``, so a
kill at any point leaves either a complete checkpoint or none. ``last`` resolves to the newest
complete one; ``model/`` is published the same way (:func:`publish_directory`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from transformers import TrainerCallback

COMPLETE_MARKER = "checkpoint_complete.json"
"""Written into a checkpoint after everything else; a checkpoint without it is incomplete."""


def checkpoint_is_complete(path: Path) -> bool:
    """A checkpoint counts only when its completion marker exists (written after every other file).

    Checkpoints of older flythinker versions (no marker) count when ``trainer_state.json`` parses.
    """
    if (path / COMPLETE_MARKER).is_file():
        return True
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def _step_of(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def complete_checkpoints(checkpoints: Path) -> list[Path]:
    """Complete ``checkpoint-N`` directories, oldest first."""
    if not checkpoints.is_dir():
        return []
    found = [p for p in checkpoints.glob("checkpoint-*") if p.is_dir() and _step_of(p) >= 0]
    return sorted((p for p in found if checkpoint_is_complete(p)), key=_step_of)


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint (what ``--resume-from-checkpoint last`` resumes), or ``None``."""
    found = complete_checkpoints(checkpoints)
    return found[-1] if found else None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``path`` through a unique temporary file and ``os.replace``: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def publish_directory(staged: Path, final: Path) -> None:
    """Move a completely written directory to its final name (a rename; an older copy is replaced)."""
    _fsync_dir(staged)
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, trash)
        os.replace(staged, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staged, final)
    _fsync_dir(final.parent)


class AtomicCheckpoints(TrainerCallback):
    """The Trainer writes each checkpoint under a staging folder; once it is complete (``on_save``), this
    callback writes the completion marker and renames it into ``checkpoints/``, then keeps the newest
    ``save_total_limit``. A kill during a save leaves only the staging folder, removed at the next start.
    """

    def __init__(self, checkpoints: Path, save_total_limit: int | None):
        self.checkpoints = checkpoints
        self.save_total_limit = save_total_limit

    def on_save(self, args, state, control, **kwargs):
        _barrier()  # every process has written its part (e.g. its RNG state)
        if state.is_world_process_zero:
            staged = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            atomic_write_text(staged / COMPLETE_MARKER, json.dumps({"global_step": state.global_step}))
            publish_directory(staged, self.checkpoints / staged.name)
            if self.save_total_limit:
                for old in complete_checkpoints(self.checkpoints)[: -self.save_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
        _barrier()


def _barrier() -> None:
    """Wait for every rank (a no-op in one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
