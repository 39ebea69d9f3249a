"""``run`` (predict + score) and ``score`` over a split, as the CLI calls them.

Output folder::

    <out>/<track>/predictions.jsonl, log.jsonl              the model's predictions (resumable)
    <out>/task3_dN/predictions.jsonl                        T3, the LM re-ranking a first stage's top-k
    <out>/task3_dN/whole_pool/predictions.jsonl             T3, the LM reading the whole pool (the paper's)
    <out>/task3_dN/baselines/<bm25|minilm>/predictions.jsonl the T3 retrieval baselines
    <out>/scores.jsonl, summary.json, summary.md             every scored row and the summaries
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flythinker.evaluation.alpsbench.contract import load_predictions
from flythinker.evaluation.alpsbench.data import TrackData, load_split, model_view, resolve_split_dir
from flythinker.evaluation.alpsbench.manifest import check_manifest, merge_reports, track_hashes
from flythinker.evaluation.alpsbench.official_judges import T4_DIMENSIONS
from flythinker.evaluation.alpsbench.report import run_timing, score_track, summarize_track, write_reports
from flythinker.evaluation.alpsbench.runners import (
    PredictionWriter,
    RunnerSettings,
    run_copy_baseline,
    run_generative_track,
    run_retrieval_track,
)
from flythinker.evaluation.alpsbench.t3_pool import WholePoolSelector

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
    paper_judge=None,
    show_progress: bool = True,
    load_seconds: float | None = None,
) -> dict[str, Any]:
    """Predict every selected track with ``lm`` (T3 also with the ``baselines``), then score.

    Without ``lm`` only the T3 baselines run (other tracks are skipped). Predictions already in
    ``out`` are kept (a killed run resumes) when ``out``'s manifest has the same settings
    (:mod:`.manifest`; otherwise :class:`~.manifest.RunSettingsError` before any row runs).
    Returns the summary (merged into ``out``'s reports for the tracks not rerun); its ``timing``
    is this invocation's (:func:`~.report.run_timing`; ``load_seconds``: the caller's model loading).
    """
    started = time.perf_counter()
    settings = settings or RunnerSettings()
    settings.validate()
    out = Path(out)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; expected some of {BASELINES}")
    loaded = {
        t: d.limited(limit)
        for t, d in load_split(data, split, tracks, require_references=not is_test_split(data, split)).items()
    }
    if lm is not None:
        check_context(lm, settings)
        has_t3 = any(d.task == "task3" for d in loaded.values())
        if getattr(lm, "engine", None) in NO_NEXT_TOKEN_READS and has_t3 and settings.t3_protocol != "pool":
            raise ValueError(
                f"a model run by --engine {lm.engine} runs T3 only with --t3-protocol pool (no next-token reads)"
            )
    manifest = check_manifest(out, run_manifest(lm, settings, judge_lm, paper_judge, loaded))
    has_t3 = any(d.task == "task3" for d in loaded.values())
    retrievers = _retrievers([b for b in baselines if b != "copy"] if has_t3 else [])
    entries: list[tuple[str, str, Path]] = []
    run_counts: dict[str, dict[str, int]] = {}
    reranker = None
    model_seconds: dict[str, float] = {}
    for track, td in loaded.items():
        if td.task == "task3":
            if lm is not None and settings.t3_protocol in ("pool", "both"):
                pool = WholePoolSelector(lm, answer_tokens=settings.t3_answer_tokens)
                writer = PredictionWriter(out / track / "whole_pool", track)
                tick = time.perf_counter()
                run_counts[f"{track}/{lm.name} + whole-pool"] = run_retrieval_track(
                    pool.predict_many, td, writer, 1, show_progress, f"{track} whole pool"
                )
                model_seconds[f"{track}/{lm.name} + whole-pool"] = time.perf_counter() - tick
                entries.append((track, f"{lm.name} + whole-pool", writer.path))
            if lm is not None and settings.t3_protocol in ("rerank", "both"):
                if reranker is None:
                    from flythinker.evaluation.alpsbench.retrieval import LMReranker

                    first = (
                        retrievers.get(settings.t3_first_stage)
                        or _retrievers([settings.t3_first_stage])[settings.t3_first_stage]
                    )
                    reranker = LMReranker(lm, first, k=settings.t3_k, answer_tokens=settings.t3_answer_tokens)
                writer = PredictionWriter(out / track, track)
                tick = time.perf_counter()
                run_counts[f"{track}/{lm.name}"] = run_retrieval_track(
                    reranker.predict_many,
                    td,
                    writer,
                    lm.batch_size,
                    show_progress,
                    f"{track} {reranker.name}",
                )
                model_seconds[f"{track}/{lm.name}"] = time.perf_counter() - tick
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
            tick = time.perf_counter()
            run_counts[f"{track}/{lm.name}"] = run_generative_track(lm, td, writer, settings, show_progress)
            model_seconds[f"{track}/{lm.name}"] = time.perf_counter() - tick
            entries.append((track, lm.name, writer.path))
    if not entries:
        raise ValueError("nothing to run: pass a model (--model) or select a T3 track for the baselines")
    return score_entries(
        loaded,
        entries,
        out,
        judge_lm=judge_lm,
        paper_judge=paper_judge,
        split=resolve_split_dir(data, split).name,
        extra={
            "run_counts": run_counts,
            "manifest": manifest,
            "timing": run_timing(run_counts, model_seconds, load_seconds),
        },
        started=started,
    )


NO_NEXT_TOKEN_READS = ("endpoint", "vllm")
"""Engines whose model gives no next-token reads (no T3 re-ranking, no local judge)."""


def run_manifest(lm, settings: RunnerSettings, judge_lm, paper_judge, loaded) -> dict[str, Any]:
    """The settings that make a run's predictions and scores what they are (see :mod:`.manifest`)."""
    model = getattr(lm, "model", None)
    dtype = str(next(model.parameters()).dtype) if model is not None else getattr(lm, "dtype", None)
    return {
        "model": None if lm is None else lm.name,
        "engine": getattr(lm, "engine", None),
        "engine_settings": getattr(lm, "engine_settings", None),
        "model_endpoint": getattr(getattr(lm, "endpoint", None), "url", None),
        "dtype": dtype,
        "max_prompt_tokens": None if lm is None else lm.max_prompt_tokens,
        "decoding": None if lm is None else dict(vars(settings)),
        "local_judge": None if judge_lm is None else judge_lm.name,
        "paper_judge": None if paper_judge is None else paper_judge.describe(),
        "data": track_hashes(loaded),
    }


def check_context(lm, settings: RunnerSettings) -> None:
    """Refuse a prompt budget + answer budget beyond the model's context (before any row runs)."""
    config = getattr(lm, "config", None) or getattr(getattr(lm, "model", None), "config", None)
    context = getattr(lm, "max_model_len", None) or getattr(config, "max_position_embeddings", None)
    if context is None and config is not None and hasattr(config, "get_text_config"):
        context = getattr(config.get_text_config(), "max_position_embeddings", None)
    if not isinstance(context, int):
        return
    need = lm.max_prompt_tokens + max(settings.max_new_tokens, settings.t4_max_new_tokens)
    if need > context:
        raise ValueError(
            f"--max-prompt-tokens {lm.max_prompt_tokens} + answer tokens "
            f"{max(settings.max_new_tokens, settings.t4_max_new_tokens)} = {need} exceeds the model's "
            f"context of {context} tokens; lower --max-prompt-tokens to at most "
            f"{context - max(settings.max_new_tokens, settings.t4_max_new_tokens)}"
        )


def is_test_split(data: str | Path, split: str | None) -> bool:
    """Whether the split folder is ``test`` (hidden references: predictions are checked, not scored)."""
    return resolve_split_dir(data, split).name == "test"


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


def _failed(status: Mapping[str, str] | None, bid: str) -> bool:
    return status is not None and status.get(bid) == "failed"


def _judge_rows(
    judge_lm, td: TrackData, predictions: Mapping[str, dict], rows: list[dict], status=None
) -> None:
    """The local T4 judge (``local_judge``); failed or empty answers are never judged."""
    from flythinker.evaluation.alpsbench.judges import judge_task4

    items, targets = [], []
    for inp, row in zip(td.inputs, rows):
        bid = inp["benchmark_id"]
        if _failed(status, bid) or not predictions[bid]["answer"].strip():
            continue
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
        targets.append(row)
    for row, dims in zip(targets, judge_task4(judge_lm, td.ability, items) if items else []):
        row["local_judge"] = dims


MEMORY_ZERO = {"llm_score_100": 0.0, "final_score_100": 0.0}


def _paper_judge_rows(
    paper_judge, td: TrackData, predictions: Mapping[str, dict], rows: list[dict], status=None
) -> None:
    """The paper's API judge (``paper_judge``); rows the model failed score 0 and are never sent."""
    sent, todo = [], []
    for inp, row in zip(td.inputs, rows):
        bid = inp["benchmark_id"]
        pred, gold = predictions[bid], td.references[bid]["gold"]
        if td.task == "task4":
            if _failed(status, bid) or not pred["answer"].strip():
                dims = T4_DIMENSIONS[td.ability]
                row["paper_judge"] = {"status": "model_failed", **{d: 0.0 for d in dims}}
                continue
            todo.append(
                {
                    "selected_memory": gold.get("selected_memory"),
                    "answer": pred["answer"],
                    "used_memory_fact": pred["used_memory_fact"],
                }
            )
        else:
            if _failed(status, bid):
                row["paper_judge"] = {"status": "model_failed", **MEMORY_ZERO, "algo_score_100": 0.0}
                continue
            items = gold["memory_items"] if td.task == "task1" else gold["answer"]
            todo.append((items or [], pred["memory_items"]))
        sent.append(row)
    if not todo:
        return
    results = paper_judge.task4(td.ability, todo) if td.task == "task4" else paper_judge.memory(todo)
    for row, res in zip(sent, results):
        row["paper_judge"] = res


def score_entries(
    loaded: Mapping[str, TrackData],
    entries: Sequence[tuple[str, str, Path]],
    out: str | Path,
    *,
    judge_lm=None,
    paper_judge=None,
    split: str | None = None,
    extra: Mapping[str, Any] | None = None,
    started: float | None = None,
) -> dict[str, Any]:
    """Score (track, method, predictions path) entries; writes scores.jsonl, summary.json, summary.md.

    ``started`` (a ``time.perf_counter()`` reading): ``timing.elapsed_s`` is the time since then.

    ``judge_lm``: a local LM judge (``local_judge_*`` fields, a proxy); ``paper_judge``: an
    :class:`~.paper_judge.PaperJudge` (``paper_judge`` fields, the paper's definitions).
    """
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
        status = _status(Path(path))
        rows = score_track(td, predictions, method, status, match_judge)
        if judge_lm is not None and td.task == "task4":
            _judge_rows(judge_lm, td, predictions, rows, status)
        if paper_judge is not None and td.task in ("task1", "task2", "task4"):
            _paper_judge_rows(paper_judge, td, predictions, rows, status)
        s = summarize_track(track, method, rows)
        s["predictions"] = str(path)
        summaries.append(s)
        all_rows += rows
        if td.level is not None:
            by_level.setdefault(method, {})[str(td.level)] = s["main_score"]
    summary: dict[str, Any] = {"split": split, "tracks": summaries, "task3_accuracy_by_level": by_level}
    if unscored:
        summary["not_scored"] = unscored  # hidden references: submit these predictions
    summary.update(extra or {})
    if started is not None:
        summary["timing"] = {
            "elapsed_s": round(time.perf_counter() - started, 3),
            **summary.get("timing", {}),
        }
    summary, all_rows = merge_reports(out, summary, all_rows)
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
    paper_judge=None,
) -> dict[str, Any]:
    """Score a predictions file (one track: ``track`` or inferred from its ids) or a run folder."""
    predictions = Path(predictions)
    require = not is_test_split(data, split)  # the test split is contract-checked and written unscored
    loaded = {
        t: d.limited(limit) for t, d in load_split(data, split, "all", require_references=require).items()
    }
    entries: list[tuple[str, str, Path]] = []
    if predictions.is_dir():
        for t in loaded:
            if (predictions / t / "predictions.jsonl").is_file():
                entries.append((t, "model", predictions / t / "predictions.jsonl"))
            if (predictions / t / "whole_pool" / "predictions.jsonl").is_file():
                entries.append(
                    (t, "model + whole-pool", predictions / t / "whole_pool" / "predictions.jsonl")
                )
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
    return score_entries(
        loaded,
        entries,
        out,
        judge_lm=judge_lm,
        paper_judge=paper_judge,
        split=resolve_split_dir(data, split).name,
    )


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
