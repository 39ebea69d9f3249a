"""A run folder's manifest, and merging a narrower rerun's reports into the run's.

``<out>/manifest.json`` records what made the predictions and scores in the folder: the model,
engine, dtype, prompt budget, decoding settings, the judges, and a sha256 of every track's
``model_input.jsonl``. A run into a folder that already has a manifest must use the same
settings (:func:`check_manifest` lists every difference and refuses), so a resumed run can never
mix rows made with other settings or label one model's predictions with another's name. A
setting the new run does not use (``None``, e.g. no model when only the T3 baselines run) is not
compared and the recorded one is kept.

:func:`merge_reports` keeps the rows and summaries of tracks a narrower rerun did not touch, so
``--track t4`` after a full run updates T4 and leaves T1–T3 in ``summary.json``, ``summary.md``
and ``scores.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


class RunSettingsError(ValueError):
    """A run into an output folder made with other settings."""


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def track_hashes(loaded: Mapping[str, Any]) -> dict[str, str]:
    """sha256 (16 hex) of each track's ``model_input.jsonl``."""
    return {t: file_sha256(Path(td.directory) / "model_input.jsonl") for t, td in loaded.items()}


def _diff(old: Any, new: Any, where: str, out: list[str]) -> None:
    if new is None:
        return
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for k in sorted(set(old) | set(new)):
            if k in new:
                _diff(old.get(k), new[k], f"{where}.{k}" if where else str(k), out)
        return
    if old is not None and old != new:
        out.append(f"{where}: {old!r} -> {new!r}")


def check_manifest(out: str | Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse a run whose settings differ from ``out``'s manifest; return the merged manifest (written)."""
    path = Path(out) / MANIFEST
    merged: dict[str, Any] = json.loads(json.dumps(manifest))
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        differences: list[str] = []
        data_old = old.get("data") or {}
        for track, digest in (manifest.get("data") or {}).items():
            if track in data_old and data_old[track] != digest:
                differences.append(f"data.{track}: model_input.jsonl changed ({data_old[track]} -> {digest})")
        _diff(
            {k: v for k, v in old.items() if k != "data"},
            {k: v for k, v in manifest.items() if k != "data"},
            "",
            differences,
        )
        if differences:
            raise RunSettingsError(
                f"{path}: this output folder holds a run made with other settings ("
                + "; ".join(differences)
                + "); use another --out, or the same settings to resume"
            )
        for k, v in old.items():
            if merged.get(k) is None:
                merged[k] = v
        merged["data"] = {**data_old, **(manifest.get("data") or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
    return merged


def merge_reports(
    out: str | Path, summary: dict[str, Any], rows: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], list[Mapping[str, Any]]]:
    """``summary`` and ``rows`` with the earlier run's entries for the (track, method)s not redone.

    ``run_counts`` stays this invocation's own (what it generated, skipped and failed).
    """
    out = Path(out)
    old_summary_path, old_rows_path = out / "summary.json", out / "scores.jsonl"
    if not old_summary_path.is_file():
        return summary, list(rows)
    old = json.loads(old_summary_path.read_text(encoding="utf-8"))
    redone = {(s["track"], s["method"]) for s in summary["tracks"]}
    redone |= {(s["track"], s["method"]) for s in summary.get("not_scored", [])}
    merged = dict(summary)
    merged["tracks"] = [s for s in old.get("tracks", []) if (s["track"], s["method"]) not in redone]
    merged["tracks"] = sorted(
        merged["tracks"] + list(summary["tracks"]), key=lambda s: (s["track"], s["method"])
    )
    not_scored = [s for s in old.get("not_scored", []) if (s["track"], s["method"]) not in redone]
    if not_scored or summary.get("not_scored"):
        merged["not_scored"] = not_scored + list(summary.get("not_scored", []))
    levels: dict[str, dict[str, float]] = {
        m: dict(v) for m, v in (old.get("task3_accuracy_by_level") or {}).items()
    }
    for method, by in (summary.get("task3_accuracy_by_level") or {}).items():
        levels.setdefault(method, {}).update(by)
    merged["task3_accuracy_by_level"] = levels
    kept: list[Mapping[str, Any]] = []
    if old_rows_path.is_file():
        for line in old_rows_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                if (r.get("track"), r.get("method")) not in redone:
                    kept.append(r)
    return merged, kept + list(rows)
