"""Per-row scores, per-track summaries and the written reports (scores.jsonl, summary.json, summary.md).

Each score row: ``benchmark_id``, ``track``, ``method``, the release scorer's metrics
(:func:`~.scoring.score_row`), for T1/T2 the paper's matcher under both matchings
(``match_greedy`` / ``match_hungarian``: precision, recall, f1, avg_pair_score, algo_score_100),
for T4 the judge dimensions (``judge``) when a judge ran, and the row's runner ``status`` when a
log exists. A summary row per (track, method): the release summary, matcher means, judge
dimension means, and the number of failed rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flythinker.evaluation.alpsbench.data import TrackData
from flythinker.evaluation.alpsbench.matching import score_memory_match
from flythinker.evaluation.alpsbench.report_md import language_of, summary_markdown
from flythinker.evaluation.alpsbench.scoring import score_row as release_score_row
from flythinker.evaluation.alpsbench.scoring import summarize_scores

MATCH_KEYS = ("precision", "recall", "f1", "avg_pair_score", "algo_score_100")


def score_track(
    data: TrackData,
    predictions: Mapping[str, dict[str, Any]],
    method: str,
    status: Mapping[str, str] | None = None,
    match_judge=None,
) -> list[dict[str, Any]]:
    """Score rows (input order) of one method's contract predictions on one track.

    ``match_judge`` (T1/T2): a local :data:`~.matching.MatchJudge` blended with the matcher's algo
    score, reported as ``local_judge_score_100`` / ``local_judge_final_score_100`` (not the paper's).
    """
    if data.references is None:
        raise ValueError(f"{data.directory}: no reference_output.jsonl; this split cannot be scored locally")
    rows = []
    for inp in data.inputs:
        bid = inp["benchmark_id"]
        pred, ref = predictions[bid], data.references[bid]
        row: dict[str, Any] = {
            "benchmark_id": bid,
            "track": data.track,
            "method": method,
            **release_score_row(data.track, pred, ref),
        }
        if data.task in ("task1", "task2"):
            gold = ref["gold"]["memory_items"] if data.task == "task1" else ref["gold"]["answer"]
            for matching in ("greedy", "hungarian"):
                m = score_memory_match(gold, pred["memory_items"], matching, judge=match_judge)
                row[f"match_{matching}"] = {k: m[k] for k in MATCH_KEYS}
                if match_judge is not None:  # a local proxy, named so it cannot pass for the paper's
                    row[f"match_{matching}"].update(
                        local_judge_score_100=m["judge_score_100"],
                        local_judge_final_score_100=m["final_score_100"],
                    )
        if status is not None:
            row["status"] = status.get(bid, "unknown")
        rows.append(row)
    return rows


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None


def summarize_track(track: str, method: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out = summarize_scores(track, rows)
    out["method"] = method
    for matching in ("greedy", "hungarian"):
        key = f"match_{matching}"
        if rows and key in rows[0]:
            out[key] = {k: _mean([r[key][k] for r in rows]) for k in rows[0][key]}
    judged = [r["local_judge"] for r in rows if r.get("local_judge")]
    if judged:
        dims = sorted({d for j in judged for d in j})
        out["local_judge"] = {d: _mean([j[d] for j in judged if d in j]) for d in dims}
    paper = [r["paper_judge"] for r in rows if r.get("paper_judge")]
    if paper:
        out["paper_judge"] = summarize_paper_judge(paper)
        by_lang: dict[str, list] = {}
        for r in rows:
            lang = language_of(str(r["benchmark_id"]))
            if r.get("paper_judge") and lang:
                by_lang.setdefault(lang, []).append(r["paper_judge"])
        if by_lang and track.startswith("task4_ability5"):
            out["paper_judge_by_language"] = {k: summarize_paper_judge(v) for k, v in sorted(by_lang.items())}
    if rows and "status" in rows[0]:
        out["failed_rows"] = sum(1 for r in rows if r["status"] == "failed")
    return out


def summarize_paper_judge(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Means of the paper-judge fields over the rows that have a score.

    Rows the model failed (``model_failed``, never sent to the judge) carry 0 and count; rows the judge could not score
    (``judge_failed``: unparseable T1/T2 review; ``endpoint_error``: no reply) are left out and counted.
    """
    counted = [r for r in rows if r.get("status") not in ("judge_failed", "endpoint_error")]
    fields = sorted(
        {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    )
    out: dict[str, Any] = {f: _mean([r[f] for r in counted if r.get(f) is not None]) for f in fields}
    out["rows_scored"] = len(counted)
    out["rows_judged"] = sum(1 for r in rows if r.get("status") in ("ok", "incomplete", "unparsed"))
    for status in ("model_failed", "judge_failed", "endpoint_error", "unparsed", "incomplete"):
        n = sum(1 for r in rows if r.get("status") == status)
        if n:
            out[f"rows_{status}"] = n
    violations = sum(1 for r in rows if r.get("critical_rule_violated"))
    if any("critical_rule_violated" in r for r in rows):
        out["critical_rule_violations"] = violations
    return out


def write_reports(
    out: str | Path, summary: Mapping[str, Any], score_rows: Sequence[Mapping[str, Any]]
) -> None:
    """``scores.jsonl``, ``summary.json`` and ``summary.md`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "scores.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in score_rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")


def run_timing(
    run_counts: Mapping[str, Mapping[str, int]],
    model_seconds: Mapping[str, float],
    load_seconds: float | None,
) -> dict[str, Any]:
    """This invocation's model loading (``model_load_s``, measured by the caller) and the model under
    test's throughput: ``model_rows`` (rows it predicted now; resumed rows excluded) in ``model_s``
    seconds, ``model_rows_per_s`` (``None`` without rows). :func:`~.pipeline.score_entries` adds ``elapsed_s``
    (predicting and scoring, model loading excluded)."""
    rows = sum(
        sum(v for k, v in run_counts[key].items() if k != "skipped")
        for key in model_seconds
        if key in run_counts
    )
    seconds = sum(model_seconds.values())
    return {
        "model_load_s": None if load_seconds is None else round(load_seconds, 3),
        "model_rows": rows,
        "model_s": round(seconds, 3),
        "model_rows_per_s": round(rows / seconds, 4) if rows and seconds > 0 else None,
    }
