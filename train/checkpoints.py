"""Atomic, resumable checkpoints for the transformers Trainer.

The Trainer writes each checkpoint into a staging folder; :class:`AtomicCheckpoints` (``on_save``)
writes :data:`COMPLETE_MARKER` (with every file's size) last and renames the folder into ``checkpoints/checkpoint-N``, so a
kill at any point leaves either a complete checkpoint or none. ``last`` resolves to the newest
intact one (:func:`checkpoint_problem` says why another was passed over); ``model/`` is published the same way (:func:`publish_directory`).
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


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be resumed, or ``None`` when it can.

    Complete means every file the resume reads: the trainer state, the weights, the optimizer, scheduler
    and RNG state, each with the size recorded in :data:`COMPLETE_MARKER` (written after every other file),
    every JSON file parsing and every safetensors header matching its file's length. Checkpoints of older
    flythinker versions (no marker, or a marker without a file list) are checked for the same files.
    """
    path = Path(path)
    marker = path / COMPLETE_MARKER
    if not marker.is_file():
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            return f"the checkpoint is incomplete (no {COMPLETE_MARKER}: a run was killed while saving it)"
        manifest = {}
    else:
        try:
            manifest = json.loads(marker.read_text()).get("files", {})
        except (OSError, ValueError, AttributeError):
            return f"{marker} is damaged (not a JSON object)"
    for name, size in manifest.items():
        file = path / name
        if not file.is_file():
            return f"the checkpoint is incomplete: {file} is missing"
        if file.stat().st_size != size:
            return f"{file} is damaged: {file.stat().st_size} bytes where {size} were written"
    names = {item.name for item in path.iterdir()}
    for what, found in (
        ("trainer_state.json", "trainer_state.json" in names),
        (
            "the weights",
            any(n.startswith(("model", "pytorch_model", "adapter_model", "global_step")) for n in names),
        ),  # fmt: skip
        (
            "the optimizer state (optimizer.pt)",
            any(n.startswith(("optimizer", "global_step")) for n in names),
        ),
        (
            "the scheduler state (scheduler.pt)",
            "scheduler.pt" in names or any(n.startswith("global_step") for n in names),
        ),
        ("the RNG state (rng_state*.pth)", any(n.startswith("rng_state") for n in names)),
    ):
        if not found:
            return f"the checkpoint is incomplete: {what} is missing from {path}"
    for file in sorted(path.glob("*.json")):
        try:
            json.loads(file.read_text())
        except (OSError, ValueError) as error:
            return f"{file} is damaged ({type(error).__name__}: {error})"
    for file in sorted(path.glob("*.safetensors")):
        problem = _safetensors_problem(file)
        if problem is not None:
            return f"{file} is damaged ({problem})"
    return None


def _safetensors_problem(file: Path) -> str | None:
    """A safetensors file's header parses and its tensors end exactly at the end of the file."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if length <= 0 or 8 + length > size:
                return "truncated header"
            header = json.loads(handle.read(length))
    except (OSError, ValueError) as error:
        return f"unreadable header: {error}"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    if 8 + length + max(ends, default=0) != size:
        return f"{size} bytes, but its header describes {8 + length + max(ends, default=0)}"
    return None


def checkpoint_is_complete(path: Path) -> bool:
    """Whether the checkpoint at ``path`` can be resumed (:func:`checkpoint_problem` finds nothing)."""
    return checkpoint_problem(path) is None


def file_manifest(path: Path) -> dict[str, int]:
    """Every file under ``path`` (relative name -> size in bytes)."""
    return {
        str(file.relative_to(path)): file.stat().st_size
        for file in sorted(path.rglob("*"))
        if file.is_file() and file.name != COMPLETE_MARKER
    }


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


def last_complete_checkpoint(checkpoints: Path, skipped: list[str] | None = None) -> Path | None:
    """The newest complete checkpoint (what ``--resume-from-checkpoint last`` resumes), or ``None``.

    Each newer ``checkpoint-N`` passed over is appended to ``skipped`` as ``"<path>: <why>"``.
    """
    if not checkpoints.is_dir():
        return None
    found = [p for p in checkpoints.glob("checkpoint-*") if p.is_dir() and _step_of(p) >= 0]
    for path in sorted(found, key=_step_of, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        if skipped is not None:
            skipped.append(f"{path}: {problem}")
    return None


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
            manifest = {"global_step": state.global_step, "files": file_manifest(staged)}
            atomic_write_text(staged / COMPLETE_MARKER, json.dumps(manifest, indent=1))
            publish_directory(staged, self.checkpoints / staged.name)
            if self.save_total_limit:
                for old in complete_checkpoints(self.checkpoints)[: -self.save_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
        _barrier()


def _barrier() -> None:
    """Wait for every rank (a no-op in one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
