"""What a run was trained on, and the check that a resumed run continues the same training.

``provenance.json`` records the training data's SHA-256 (and size) next to ``finetune_config.json``.
:func:`check_resume_matches` compares a resumed run's options and data with the stored ones and refuses
any difference, listing them, before anything is written: a model half-trained on other data or with other
options must not end up described by the new settings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .finetune_config import FLYTHINKER_ONLY_FIELDS, FinetuneConfig, _flag

PROVENANCE_FILE = "provenance.json"
RESUME_MAY_CHANGE = frozenset({"resume_from_checkpoint", "overwrite", "keep_freed_host_memory", "output_dir"})
"""Options that do not change what is trained: a resumed run may set them differently."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance(config: FinetuneConfig) -> dict[str, Any]:
    """The run's data fingerprint (written to ``provenance.json``)."""
    return {
        "train_file": config.train_file,
        "train_file_sha256": file_sha256(config.train_file),
        "train_file_bytes": Path(config.train_file).stat().st_size,
    }


def stored_run_directory(config: FinetuneConfig, checkpoint: str | None) -> Path:
    """The run directory whose options a resume must match: the one holding ``checkpoint`` (a path
    ``<run>/checkpoints/checkpoint-N``), else ``--output-dir``."""
    if checkpoint is not None:
        run = Path(checkpoint).resolve().parent.parent
        if (run / "finetune_config.json").is_file():
            return run
    return Path(config.output_dir)


def _load(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read it ({error}); the run's record is damaged") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object; the run's record is damaged")
    return value


def resume_differences(config: FinetuneConfig, run: Path, data: dict[str, Any]) -> list[str]:
    """Every difference between this run's (resolved) options and data and the stored run at ``run``."""
    stored = _load(run / "finetune_config.json")
    if stored is None:
        return []
    now = json.loads(json.dumps(asdict(config)))
    skip = RESUME_MAY_CHANGE | {"extra"} | (set(FLYTHINKER_ONLY_FIELDS) if config.method == "sft" else set())
    differences = []
    for name in sorted(set(stored) | set(now)):
        if name in skip:
            continue
        before, after = stored.get(name, now.get(name)), now.get(name)  # a field added since: no difference
        if name == "train_file" and before != after:
            continue  # the data is compared by content below
        if before != after:
            differences.append(f"{_flag(name)} {before!r} -> {after!r}")
    old = _load(run / PROVENANCE_FILE)
    if old is not None and old.get("train_file_sha256") != data["train_file_sha256"]:
        differences.append(
            f"--train-file content (sha256 {str(old.get('train_file_sha256'))[:12]}… of {old.get('train_file')} "
            f"-> {data['train_file_sha256'][:12]}… of {config.train_file})"
        )
    elif old is None and stored.get("train_file") != config.train_file:
        differences.append(f"--train-file {stored.get('train_file')!r} -> {config.train_file!r}")
    return differences


def check_resume_matches(config: FinetuneConfig, checkpoint: str | None, data: dict[str, Any]) -> None:
    """Refuse to resume when the options or the data differ from the stored run (one line listing them)."""
    run = stored_run_directory(config, checkpoint)
    differences = resume_differences(config, run, data)
    if differences:
        raise ValueError(
            f"--resume-from-checkpoint {config.resume_from_checkpoint}: the run in {run} was trained with other "
            f"settings: {'; '.join(differences)}. Resume with the stored options ({run / 'finetune_config.json'}), "
            "or start a new --output-dir"
        )
