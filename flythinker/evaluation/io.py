"""Writing predictions (JSONL) and metrics (JSON) of an evaluation run."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def prediction_row(
    index: int,
    prediction: str,
    *,
    record: Any | None = None,
    reference: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One predictions.jsonl row: ``index``, (``id``, ``user_id``, ``request`` of ``record``), ``prediction``,
    ``reference`` (default: the record's target), then ``extra``."""
    row: dict[str, Any] = {"index": index}
    if record is not None:
        row.update(id=record.id, user_id=record.user_id, request=record.request)
    row["prediction"] = prediction
    if reference is not None:
        row["reference"] = reference
    elif record is not None:
        row["reference"] = record.target
    if extra is not None:
        row.update(extra)
    return row


def write_predictions_jsonl(
    path: str | os.PathLike,
    predictions: Sequence[str],
    *,
    references: Sequence[str | None] | None = None,
    records: Sequence[Any] | None = None,
    extra: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Write one JSON object per prediction (:func:`prediction_row`).

    Each line holds ``index``, ``prediction``, ``reference`` (when given) and, when ``records``
    (:class:`~flythinker.train.records.PersonalizedRecord` s) are given, ``id``, ``user_id`` and
    ``request``; ``reference`` then defaults to the record's target. ``extra[i]`` is merged in
    (e.g. token counts, timings). Parent folders are created. Returns the path.
    """
    n = len(predictions)
    for name, seq in (("references", references), ("records", records), ("extra", extra)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} predictions")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        for i, pred in enumerate(predictions):
            row = prediction_row(
                i,
                pred,
                record=None if records is None else records[i],
                reference=None if references is None else references[i],
                extra=None if extra is None else extra[i],
            )
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def read_predictions_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a file written by :func:`write_predictions_jsonl`; errors name the file and line.

    Raises ``ValueError`` for invalid UTF-8 or JSON, a line that is not an object, or ``index`` values
    that are not 0, 1, 2, ... in order (a file mixing runs or repeating rows).
    """
    source = Path(path)
    if source.is_dir():
        raise IsADirectoryError(
            f"{path}: is a directory; expected a predictions .jsonl file (e.g. "
            f"{source / 'predictions.jsonl'})"
        )
    if not source.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    rows = []
    with open(source, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(
                    f"{path} line {lineno}: invalid UTF-8 (byte {exc.start + 1} of the line); "
                    "save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {lineno}: expected a JSON object, got {type(row).__name__}")
            if "index" in row and row["index"] != len(rows):
                raise ValueError(
                    f"{path} line {lineno}: index {row['index']!r} where {len(rows)} was expected: the "
                    "file repeats, skips or mixes rows of different runs"
                )
            rows.append(row)
    return rows


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN / inf are not JSON
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_metrics_json(path: str | os.PathLike, metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics`` as indented JSON (NaN/inf become ``null``). Returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_jsonable(metrics), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out
