"""``run`` (predict + score) and ``score`` over a split, as the CLI calls them.

Output folder::

    <out>/<track>/predictions.jsonl, log.jsonl              the model's predictions (resumable)
    <out>/task3_dN/baselines/<bm25|minilm>/predictions.jsonl the T3 retrieval baselines
    <out>/scores.jsonl, summary.json, summary.md             every scored row and the summaries
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flythinker.evaluation.alpsbench.contract import load_predictions
from flythinker.evaluation.alpsbench.data import TrackData, load_split, model_view
from flythinker.evaluation.alpsbench.report import score_track, summarize_track, write_reports
from flythinker.evaluation.alpsbench.runners import (
    PredictionWriter,
    RunnerSettings,
    run_copy_baseline,
    run_generative_track,
    run_retrieval_track,
)

BASELINES = ("bm25", "minilm", "copy")  # T3 retrievers; T2's unchanged-memory baseline


def _retrievers(names: Sequence[str]):
    from flythinker.evaluation.alpsbench.retrieval import make_retriever

    return {n: make_retriever(n) for n in names}


def run_alpsbench(
    data: str | Path,
    split: str | None,
    tracks: str | Sequence[str],
    out: str | Path,
    *,
    lm=None,
    settings: RunnerSettings | None = None,
    limit: int | None = None,
    baselines: Sequence[str] = BASELINES,
    judge_lm=None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Predict every selected track with ``lm`` (T3 also with the ``baselines``), then score.

    Without ``lm`` only the T3 baselines run (other tracks are skipped). Predictions already in
    ``out`` are kept (a killed run resumes). Returns the summary (also written to ``out``).
    """
    settings = settings or RunnerSettings()
    out = Path(out)
    loaded = {t: d.limited(limit) for t, d in load_split(data, split, tracks).items()}
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; expected some of {BASELINES}")
    has_t3 = any(d.task == "task3" for d in loaded.values())
    retrievers = _retrievers([b for b in baselines if b != "copy"] if has_t3 else [])
    entries: list[tuple[str, str, Path]] = []
    run_counts: dict[str, dict[str, int]] = {}
    reranker = None
    for track, td in loaded.items():
        if td.task == "task3":
            if lm is not None:
                if reranker is None:
                    from flythinker.evaluation.alpsbench.retrieval import LMReranker

                    first = (
                        retrievers.get(settings.t3_first_stage)
                        or _retrievers([settings.t3_first_stage])[settings.t3_first_stage]
                    )
                    reranker = LMReranker(lm, first, k=settings.t3_k, answer_tokens=settings.t3_answer_tokens)
                writer = PredictionWriter(out / track, track)
                run_counts[f"{track}/{lm.name}"] = run_retrieval_track(
                    reranker.predict_many,
                    td,
                    writer,
                    lm.batch_size,
                    show_progress,
                    f"{track} {reranker.name}",
                )
                entries.append((track, f"{lm.name} + {reranker.name}", writer.path))
            for name, retriever in retrievers.items():
                writer = PredictionWriter(out / track / "baselines" / name, track)
                run_counts[f"{track}/{name}"] = run_retrieval_track(
                    lambda views, r=retriever: [r.predict(v) for v in views],
                    td,
                    writer,
                    32,
                    show_progress,
                    f"{track} {name}",
                )
                entries.append((track, name, writer.path))
            continue
        if td.task == "task2" and "copy" in baselines:
            writer = PredictionWriter(out / track / "baselines" / "copy", track)
            run_counts[f"{track}/copy"] = run_copy_baseline(td, writer)
            entries.append((track, "copy (memory unchanged)", writer.path))
        if lm is not None:
            writer = PredictionWriter(out / track, track)
            run_counts[f"{track}/{lm.name}"] = run_generative_track(lm, td, writer, settings, show_progress)
            entries.append((track, lm.name, writer.path))
    if not entries:
        raise ValueError("nothing to run: pass a model (--model) or select a T3 track for the baselines")
    summary = score_entries(loaded, entries, out, judge_lm=judge_lm, split=split)
    summary["run_counts"] = run_counts
    summary["settings"] = dict(vars(settings))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    return summary


def _status(path: Path) -> dict[str, str] | None:
    log = path.with_name("log.jsonl")
    if not log.is_file():
        return None
    out = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            out[entry["benchmark_id"]] = entry.get("status", "unknown")
    return out


def _judge_rows(judge_lm, td: TrackData, predictions: Mapping[str, dict], rows: list[dict]) -> None:
    from flythinker.evaluation.alpsbench.judges import judge_task4

    items = []
    for inp in td.inputs:
        bid = inp["benchmark_id"]
        gold = td.references[bid]["gold"].get("selected_memory") or {}
        items.append(
            {
                "ability": td.ability,
                "memory": str(gold.get("value") or ""),
                "query": model_view(td.track, inp)["query"],
                "answer": predictions[bid]["answer"],
                "used_memory_fact": predictions[bid]["used_memory_fact"],
            }
        )
    for row, dims in zip(rows, judge_task4(judge_lm, td.ability, items)):
        row["judge"] = dims


def score_entries(
    loaded: Mapping[str, TrackData],
    entries: Sequence[tuple[str, str, Path]],
    out: str | Path,
    *,
    judge_lm=None,
    split: str | None = None,
) -> dict[str, Any]:
    """Score (track, method, predictions path) entries; writes scores.jsonl, summary.json, summary.md."""
    all_rows: list[dict[str, Any]] = []
    summaries = []
    by_level: dict[str, dict[str, float]] = {}
    unscored = []
    for track, method, path in entries:
        td = loaded[track]
        predictions = load_predictions(path, track, [r["benchmark_id"] for r in td.inputs])
        if td.references is None:  # the test split: the file is the submission, checked but not scored
            unscored.append(
                {"track": track, "method": method, "predictions": str(path), "rows": len(predictions)}
            )
            continue
        match_judge = None
        if judge_lm is not None and td.task in ("task1", "task2"):
            from flythinker.evaluation.alpsbench.judges import LMMatchJudge

            match_judge = LMMatchJudge(judge_lm)
        rows = score_track(td, predictions, method, _status(Path(path)), match_judge)
        if judge_lm is not None and td.task == "task4":
            _judge_rows(judge_lm, td, predictions, rows)
        s = summarize_track(track, method, rows)
        s["predictions"] = str(path)
        summaries.append(s)
        all_rows += rows
        if td.level is not None:
            by_level.setdefault(method, {})[str(td.level)] = s["main_score"]
    summary = {"split": split, "tracks": summaries, "task3_accuracy_by_level": by_level}
    if unscored:
        summary["not_scored"] = unscored  # hidden references: submit these predictions
    write_reports(out, summary, all_rows)
    return summary


def score_alpsbench(
    data: str | Path,
    split: str | None,
    predictions: str | Path,
    out: str | Path,
    *,
    track: str | None = None,
    limit: int | None = None,
    judge_lm=None,
) -> dict[str, Any]:
    """Score a predictions file (one track: ``track`` or inferred from its ids) or a run folder."""
    predictions = Path(predictions)
    loaded = {t: d.limited(limit) for t, d in load_split(data, split, "all", require_references=True).items()}
    entries: list[tuple[str, str, Path]] = []
    if predictions.is_dir():
        for t in loaded:
            if (predictions / t / "predictions.jsonl").is_file():
                entries.append((t, "model", predictions / t / "predictions.jsonl"))
            for b in sorted((predictions / t / "baselines").glob("*/predictions.jsonl")):
                entries.append((t, b.parent.name, b))
        if not entries:
            raise ValueError(f"{predictions}: no <track>/predictions.jsonl inside")
    else:
        if track is None:
            track = _infer_track(predictions, loaded)
        if track not in loaded:
            raise ValueError(f"track {track!r} is not in this split; it has {list(loaded)}")
        entries.append((track, predictions.stem, predictions))
    return score_entries(loaded, entries, out, judge_lm=judge_lm, split=split)


def _infer_track(path: Path, loaded: Mapping[str, TrackData]) -> str:
    if not path.is_file():
        raise ValueError(f"{path}: no such predictions file")
    ids = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                ids.add(json.loads(line).get("benchmark_id"))
            except (json.JSONDecodeError, AttributeError):
                continue
    matches = [t for t, d in loaded.items() if ids and ids <= {r["benchmark_id"] for r in d.inputs}]
    if len(matches) != 1:
        raise ValueError(
            f"{path}: cannot tell which track these predictions are for "
            f"({'candidates ' + str(matches) if matches else 'no track has all their ids'}); pass --track"
        )
    return matches[0]
