"""The public release's local scorer (``src/benchmark/metrics.py`` of ThisIsCosine/AlpsBench, MIT,
HEAD ``90eaf5d``), exact: one ``score_row`` per prediction, ``summarize_scores`` per track.

Text normalisation (:func:`normalize_text`): ``None`` → ``""``; other non-strings →
``json.dumps(value, ensure_ascii=False, sort_keys=True)``; then strip, lowercase and collapse
whitespace (punctuation is kept).

* T1 / T2: multiset precision / recall / F1 over the tuples (label, value, type,
  preference_attitude, time_scope, emotion) of normalised fields; both sides empty → 1.0;
  ``main_score`` = F1. T1's gold is ``gold.memory_items``, T2's is ``gold.answer``. Values are
  rounded to 6 decimals.
* T3: ``main_score`` = 1 if the normalised ``selected_memory_id`` equals the gold id (or the
  predicted ``selected_memory.value`` equals the gold value), else 0.
* T4: ``main_score`` = 1 if the normalised ``used_memory_fact`` is non-empty and equals, is
  contained in, or contains the normalised gold ``selected_memory.value``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_WS = re.compile(r"\s+")


def normalize_text(value: Any) -> str:
    """The release scorer's normalisation (punctuation kept)."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return _WS.sub(" ", text.strip().lower())


def _round(value: float) -> float:
    return round(float(value), 6)


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return _round(sum(values) / len(values)) if values else 0.0


def _payload(prediction: Mapping[str, Any]) -> Any:
    return prediction["prediction"] if "prediction" in prediction else prediction


def _memory_items(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _canonical(item: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(
        normalize_text(item.get(k))
        for k in ("label", "value", "type", "preference_attitude", "time_scope", "emotion")
    )


def multiset_f1(
    pred_items: Sequence[Mapping[str, Any]], ref_items: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Multiset P/R/F1 of canonical item tuples, plus exact_match and the counts."""
    pred = Counter(_canonical(i) for i in pred_items)
    ref = Counter(_canonical(i) for i in ref_items)
    tp = sum((pred & ref).values())
    n_pred, n_ref = sum(pred.values()), sum(ref.values())
    if n_pred == 0 and n_ref == 0:
        precision = recall = f1 = 1.0
    else:
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_ref if n_ref else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": _round(precision),
        "recall": _round(recall),
        "f1": _round(f1),
        "exact_match": 1.0 if pred == ref else 0.0,
        "pred_count": n_pred,
        "reference_count": n_ref,
    }


def _pred_items(track: str, prediction: Mapping[str, Any]) -> list[dict[str, Any]]:
    payload = _payload(prediction)
    if isinstance(payload, list):
        return _memory_items(payload)
    if not isinstance(payload, Mapping):
        return []
    if track == "task2":
        return _memory_items(payload.get("answer") or payload.get("memory_items"))
    return _memory_items(payload.get("memory_items"))


def _pred_memory_id(prediction: Mapping[str, Any]) -> str:
    payload = _payload(prediction)
    if not isinstance(payload, Mapping):
        return ""
    direct = payload.get("selected_memory_id") or payload.get("memory_key")
    if direct:
        return normalize_text(direct)
    selected = payload.get("selected_memory")
    return normalize_text(selected.get("memory_id")) if isinstance(selected, Mapping) else ""


def _pred_memory_value(prediction: Mapping[str, Any]) -> str:
    payload = _payload(prediction)
    if not isinstance(payload, Mapping):
        return ""
    selected = payload.get("selected_memory")
    if isinstance(selected, Mapping):
        return normalize_text(selected.get("value"))
    direct = payload.get("selected_memory_value")
    return normalize_text(direct) if direct else ""


def _field(prediction: Mapping[str, Any], *keys: str) -> str:
    payload = _payload(prediction)
    if not isinstance(payload, Mapping):
        return ""
    for key in keys:
        if payload.get(key):
            return normalize_text(payload.get(key))
    return ""


def task_of(track: str) -> str:
    """``task1`` / ``task2`` / ``task3`` / ``task4`` of a track name (``task3_d100``, ``task4_ability2``...)."""
    task = track.split("_", 1)[0]
    if task not in ("task1", "task2", "task3", "task4"):
        raise ValueError(
            f"unknown AlpsBench track {track!r}; expected task1, task2, task3_dN or task4_abilityK"
        )
    return task


def score_row(track: str, prediction: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, Any]:
    """The release scorer's metrics of one prediction row against its reference row (``main_score`` in [0, 1])."""
    task = task_of(track)
    gold = reference.get("gold") or {}
    if task in ("task1", "task2"):
        ref_items = _memory_items(gold.get("memory_items") if task == "task1" else gold.get("answer"))
        metrics = multiset_f1(_pred_items(task, prediction), ref_items)
        metrics["main_score"] = metrics["f1"]
        return metrics
    ref_memory = gold.get("selected_memory") or {}
    ref_value = normalize_text(ref_memory.get("value")) if isinstance(ref_memory, Mapping) else ""
    if task == "task3":
        ref_id = normalize_text(gold.get("selected_memory_id"))
        id_match = 1.0 if ref_id and _pred_memory_id(prediction) == ref_id else 0.0
        value_match = 1.0 if ref_value and _pred_memory_value(prediction) == ref_value else 0.0
        accuracy = 1.0 if id_match or value_match else 0.0
        return {
            "accuracy": accuracy,
            "memory_id_match": id_match,
            "memory_value_match": value_match,
            "main_score": accuracy,
        }
    fact = _field(prediction, "used_memory_fact")
    match = (
        1.0 if ref_value and fact and (fact == ref_value or fact in ref_value or ref_value in fact) else 0.0
    )
    return {
        "grounding_accuracy": match,
        "used_memory_fact_match": match,
        "response_present": 1.0 if _field(prediction, "answer", "response") else 0.0,
        "main_score": match,
    }


_SUMMARY_KEYS = {
    "task1": (
        "mean_f1",
        {
            "mean_precision": "precision",
            "mean_recall": "recall",
            "mean_f1": "f1",
            "exact_match_rate": "exact_match",
        },
    ),
    "task3": (
        "accuracy",
        {
            "accuracy": "accuracy",
            "memory_id_match_rate": "memory_id_match",
            "memory_value_match_rate": "memory_value_match",
        },
    ),
    "task4": (
        "grounding_accuracy",
        {
            "grounding_accuracy": "grounding_accuracy",
            "used_memory_fact_match_rate": "used_memory_fact_match",
            "response_present_rate": "response_present",
        },
    ),
}
_SUMMARY_KEYS["task2"] = _SUMMARY_KEYS["task1"]


def summarize_scores(track: str, scores: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The release's per-track summary: means of the row metrics, ``main_score`` = mean main score."""
    task = task_of(track)
    main_metric, keys = _SUMMARY_KEYS[task]
    out: dict[str, Any] = {"track": track, "num_rows": len(scores), "main_metric": main_metric}
    out.update({name: _mean(row[key] for row in scores) for name, key in keys.items()})
    out["main_score"] = _mean(row["main_score"] for row in scores)
    return out
