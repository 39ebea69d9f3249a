"""The release's prediction contract (``docs/prediction_contract.md`` of ThisIsCosine/AlpsBench).

One row per input ``benchmark_id`` (none missing, no duplicates, none unknown), with exactly the
track's keys and types:

* task1, task2: ``{benchmark_id: str, memory_items: list}``
* task3: ``{benchmark_id, answer, reason, selected_memory_id}`` (all strings)
* task4: ``{benchmark_id, answer, used_memory_fact}`` (all strings)

Inside T1/T2 ``memory_items``: a non-object element is dropped with a warning when a file is read
(as the official scorer does), and a key that is a near miss of a memory-item key (``lable``)
is an error, since it would silently score 0.

A row the model failed on is still a contract row (:func:`failure_row`: empty items / strings),
written and scored as a failure; why it failed goes to a separate ``failures.jsonl``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from difflib import get_close_matches
from pathlib import Path
from typing import Any

PREDICTION_KEYS: dict[str, tuple[str, ...]] = {
    "task1": ("benchmark_id", "memory_items"),
    "task2": ("benchmark_id", "memory_items"),
    "task3": ("benchmark_id", "answer", "reason", "selected_memory_id"),
    "task4": ("benchmark_id", "answer", "used_memory_fact"),
}


# Keys a memory item carries in the release's data and contract; a near miss of one is a contract error.
MEMORY_ITEM_KEYS = (
    "memory_id", "type", "label", "value", "confidence", "evidence_text", "evidence", "reasoning",
    "time_scope", "emotion", "preference_attitude", "updated_at", "label_suggestion",
)  # fmt: skip


class PredictionContractError(ValueError):
    """A predictions file that breaks the contract (message: file:line: benchmark_id: what)."""


def _task(track: str) -> str:
    task = track.split("_", 1)[0]
    if task not in PREDICTION_KEYS:
        raise PredictionContractError(f"unknown track {track!r}")
    return task


def validate_prediction_row(track: str, row: Any, where: str = "prediction") -> None:
    """Raise :class:`PredictionContractError` unless ``row`` has exactly the track's keys and types."""
    task = _task(track)
    if not isinstance(row, Mapping):
        raise PredictionContractError(
            f"{where}: a prediction row must be a JSON object, got {type(row).__name__}"
        )
    bid = row.get("benchmark_id")
    label = f"{where}: benchmark_id {bid!r}" if bid is not None else where
    expected = set(PREDICTION_KEYS[task])
    actual = set(row)
    if actual != expected:
        extra, missing = sorted(actual - expected), sorted(expected - actual)
        what = "; ".join(
            s
            for s in (
                f"extra key(s) {extra}" if extra else "",
                f"missing key(s) {missing}" if missing else "",
            )
            if s
        )
        raise PredictionContractError(
            f"{label}: {track} prediction rows have exactly the keys {list(PREDICTION_KEYS[task])}: {what}"
        )
    for key in PREDICTION_KEYS[task]:
        value = row[key]
        want = list if key == "memory_items" else str
        if not isinstance(value, want):
            raise PredictionContractError(
                f"{label}: field '{key}' must be {'a JSON array' if want is list else 'a string'}"
                f", got {type(value).__name__}"
            )
    if not bid:
        raise PredictionContractError(f"{where}: field 'benchmark_id' is empty")
    if task in ("task1", "task2"):
        for k, item in enumerate(row["memory_items"]):
            if not isinstance(item, Mapping):
                raise PredictionContractError(
                    f"{label}: memory_items[{k}] must be a JSON object, got {type(item).__name__}"
                )
            for key in item:
                if key in MEMORY_ITEM_KEYS:
                    continue
                near = get_close_matches(str(key), MEMORY_ITEM_KEYS, n=1, cutoff=0.8)
                if near:  # a misspelt key would silently score 0
                    raise PredictionContractError(
                        f"{label}: memory_items[{k}] has the key {key!r}; did you mean {near[0]!r}?"
                    )


def drop_non_object_items(track: str, row: Any, where: str) -> Any:
    """A T1/T2 row without the non-object ``memory_items`` elements, as the official scorer drops them (warned)."""
    if _task(track) not in ("task1", "task2") or not isinstance(row, Mapping):
        return row
    items = row.get("memory_items")
    if not isinstance(items, list) or all(isinstance(i, Mapping) for i in items):
        return row
    kept = [i for i in items if isinstance(i, Mapping)]
    warnings.warn(
        f"{where}: dropped {len(items) - len(kept)} non-object memory_items element(s) and scored the "
        f"rest, as the official scorer does",
        stacklevel=2,
    )
    return {**row, "memory_items": kept}


def failure_row(track: str, benchmark_id: str) -> dict[str, Any]:
    """The contract row written for an input the model failed on (scores as a failure)."""
    task = _task(track)
    if task in ("task1", "task2"):
        return {"benchmark_id": benchmark_id, "memory_items": []}
    return {key: (benchmark_id if key == "benchmark_id" else "") for key in PREDICTION_KEYS[task]}


def check_predictions(
    track: str, rows: Iterable[tuple[str, Any]], input_ids: Iterable[str], path: str = "predictions"
) -> dict[str, dict[str, Any]]:
    """Validate ``(where, row)`` pairs against the input ids: benchmark_id → row, in input order."""
    order = list(input_ids)
    known = set(order)
    found: dict[str, tuple[str, dict]] = {}
    for where, row in rows:
        row = drop_non_object_items(track, row, where)
        validate_prediction_row(track, row, where)
        bid = row["benchmark_id"]
        if bid not in known:
            raise PredictionContractError(f"{where}: benchmark_id {bid!r} is not an input row of {track}")
        if bid in found:
            raise PredictionContractError(
                f"{where}: benchmark_id {bid!r} is predicted twice (first at {found[bid][0]})"
            )
        found[bid] = (where, dict(row))
    missing = [b for b in order if b not in found]
    if missing:
        raise PredictionContractError(
            f"{path}: {len(missing)} of {len(order)} {track} input row(s) have no "
            f"prediction, e.g. {missing[:3]}; write a failure row rather than dropping one"
        )
    return {b: found[b][1] for b in order}


def load_predictions(path: str | Path, track: str, input_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Read a predictions.jsonl and check it against the contract and the track's input ids."""
    path = Path(path)
    if not path.is_file():
        raise PredictionContractError(f"{path}: no such predictions file")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise PredictionContractError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
    return check_predictions(track, rows, input_ids, str(path))
