"""Writing predictions (JSONL) and metrics (JSON) of an evaluation run."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def write_predictions_jsonl(path: str | os.PathLike, predictions: Sequence[str], *,
                            references: Sequence[str | None] | None = None, records: Sequence[Any] | None = None,
                            extra: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """Write one JSON object per prediction.

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
            row: dict[str, Any] = {"index": i}
            if records is not None:
                rec = records[i]
                row.update(id=rec.id, user_id=rec.user_id, request=rec.request)
            row["prediction"] = pred
            if references is not None:
                row["reference"] = references[i]
            elif records is not None:
                row["reference"] = records[i].target
            if extra is not None:
                row.update(extra[i])
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def read_predictions_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a file written by :func:`write_predictions_jsonl`."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path} line {lineno}: invalid JSON ({exc.msg})") from None
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
