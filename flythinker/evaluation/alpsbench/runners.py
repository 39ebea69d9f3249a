"""Driving a local LM over AlpsBench tracks, writing resumable contract prediction files.

Per track folder ``<out>/<track>/``:

* ``predictions.jsonl`` — one contract row per input (:mod:`.contract`), appended and flushed
  (``fsync``) row by row. On restart the rows already there are skipped, a half-written last line
  (a run killed mid-write) is cut off first, so a killed run continues where it stopped and no
  row is ever written twice.
* ``log.jsonl`` — one line per written row: ``status`` (``ok``, ``repaired``, ``retried``,
  ``failed``), attempts, the repairs made, the error and the raw output of a failure. A row the
  model failed on (unparseable after the bounded retry, or an exception while decoding) is
  written as a :func:`~.contract.failure_row` and scored as a failure, never dropped.

T1, T2 and T4 generate JSON greedily (the assistant turn pre-filled with its opening, see
:mod:`.prompts`), parsed and repaired by :mod:`.parsing`; an output that is still unusable gets
up to ``max_retries`` more attempts with a prompt quoting the error. T3 uses
:class:`~.retrieval.LMReranker` (a next-token read, which cannot fail to parse) or a retriever.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from flythinker.evaluation.alpsbench.contract import failure_row, validate_prediction_row
from flythinker.evaluation.alpsbench.data import TrackData, model_view
from flythinker.evaluation.alpsbench.parsing import OutputParseError, parse_prediction
from flythinker.evaluation.alpsbench.prompts import (
    PREFILL,
    retry_messages,
    task1_messages,
    task2_messages,
    task4_messages,
)

EXPECTED_SHAPE = {
    "task1": '{"memory_items": [{"type": ..., "label": ..., "value": ..., "confidence": ...}]}',
    "task2": '{"memory_items": [{"memory_id": ..., "type": ..., "label": ..., "value": ..., "confidence": ...}]}',
    "task4": '{"answer": "...", "used_memory_fact": "..."}',
}


@dataclass
class RunnerSettings:
    """Decoding budgets and the repair policy of a model run."""

    max_new_tokens: int = 256  # T1 / T2 answers
    t4_max_new_tokens: int = 384  # the answer comes first and must close; 192 cut SmolLM2's answers
    max_retries: int = 1
    t2_mode: str = "edit"  # "edit" (the model lists changes, merged into the existing memory) or "full"
    t3_protocol: str = "both"  # "pool" (the paper's: the whole candidate pool), "rerank" (a top-k), or both
    t3_first_stage: str = "bm25"
    t3_k: int = 5
    t3_answer_tokens: int = 48
    max_raw_chars: int = 2000  # raw output kept in log.jsonl for a failure

    def validate(self) -> None:
        """Refuse settings no row could run with (one line naming the option)."""
        checks = [
            (self.max_new_tokens >= 1, f"--max-new-tokens {self.max_new_tokens}: must be at least 1"),
            (
                self.t4_max_new_tokens >= 1,
                f"--t4-max-new-tokens {self.t4_max_new_tokens}: must be at least 1",
            ),
            (self.max_retries >= 0, f"--max-retries {self.max_retries}: must be 0 or more"),
            (self.t2_mode in ("edit", "full"), f"--t2-mode {self.t2_mode!r}: expected edit or full"),
            (
                self.t3_protocol in ("pool", "rerank", "both"),
                f"--t3-protocol {self.t3_protocol!r}: expected pool, rerank or both",
            ),
            (1 <= self.t3_k <= 9, f"--t3-k {self.t3_k}: must lie in 1..9 (one digit is read)"),
            (self.t3_answer_tokens >= 0, f"--t3-answer-tokens {self.t3_answer_tokens}: must be 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class PredictionWriter:
    """Append-only, resumable ``predictions.jsonl`` + ``log.jsonl`` of one track folder."""

    def __init__(self, directory: str | Path, track: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.track = track
        self.path = self.directory / "predictions.jsonl"
        self.log_path = self.directory / "log.jsonl"
        self.done: set[str] = set()
        rows = self._read_repairing(self.path)
        for row in rows:
            validate_prediction_row(track, row, f"{self.path} (resuming)")
            if row["benchmark_id"] in self.done:
                raise ValueError(
                    f"{self.path}: benchmark_id {row['benchmark_id']!r} written twice; "
                    f"this file was not written by one resumable run"
                )
            self.done.add(row["benchmark_id"])
        logs, seen = [], set()
        for entry in self._read_repairing(self.log_path):
            bid = entry.get("benchmark_id")
            if bid in self.done and bid not in seen:  # a log line whose prediction never made it is dropped
                seen.add(bid)
                logs.append(entry)
        with open(self.log_path, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in logs)

    @staticmethod
    def _read_repairing(path: Path) -> list[dict[str, Any]]:
        """Complete JSON lines of ``path``; an incomplete last line (killed mid-write) is cut off."""
        if not path.is_file():
            return []
        data = path.read_bytes()
        keep = data if data.endswith(b"\n") or not data else data[: data.rfind(b"\n") + 1]
        if len(keep) != len(data):
            with open(path, "r+b") as handle:
                handle.truncate(len(keep))
        rows = []
        for lineno, line in enumerate(keep.decode("utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"{path}:{lineno}: not valid JSON ({exc.msg}); remove the line to resume"
                    ) from exc
        return rows

    def _append(self, path: Path, obj: dict[str, Any]) -> None:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(obj, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def write(self, row: dict[str, Any], log: dict[str, Any]) -> None:
        """Validate and append one prediction row (and its log line); refuses a second row for an id."""
        validate_prediction_row(self.track, row, f"{self.path} (writing)")
        bid = row["benchmark_id"]
        if bid in self.done:
            raise ValueError(f"{self.path}: {bid!r} is already written")
        self._append(self.log_path, {"benchmark_id": bid, **log})
        self._append(self.path, row)
        self.done.add(bid)


def _progress(total: int, desc: str, enabled: bool):

    return tqdm(total=total, desc=desc, unit="row", disable=not enabled)


def merge_memory_edits(
    existing: Sequence[dict[str, Any]], edits: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """T2 ``edit`` mode: items with an existing ``memory_id`` replace it (fields merged), others are appended."""
    merged = [dict(m) for m in existing]
    index = {str(m.get("memory_id")): k for k, m in enumerate(merged) if m.get("memory_id") is not None}
    for item in edits:
        mid = item.get("memory_id")
        if mid is not None and str(mid) in index:
            k = index[str(mid)]
            merged[k] = {**merged[k], **item}
        else:
            new = dict(item)
            if mid is None or str(mid) in index:
                new["memory_id"] = f"m{len(merged) + 1}"
            index[str(new["memory_id"])] = len(merged)
            merged.append(new)
    return merged


def _prompt(lm, track: str, view: dict[str, Any], settings: RunnerSettings):
    task = track.split("_", 1)[0]
    prefill = PREFILL[task]
    budget = lm.max_prompt_tokens

    def count(messages):
        return lm.count(messages, prefill)

    if task == "task1":
        return task1_messages(view, count, budget), prefill
    if task == "task2":
        return task2_messages(view, count, budget, settings.t2_mode), prefill
    return task4_messages(view, track.split("_", 1)[1], count, budget), prefill


def run_generative_track(
    lm, data: TrackData, writer: PredictionWriter, settings: RunnerSettings, show_progress: bool = True
) -> dict[str, int]:
    """T1 / T2 / T4 over the rows not yet written; returns status counts."""
    task = data.task
    max_new = settings.t4_max_new_tokens if task == "task4" else settings.max_new_tokens
    todo = [r for r in data.inputs if r["benchmark_id"] not in writer.done]
    counts = {"ok": 0, "repaired": 0, "retried": 0, "failed": 0, "skipped": len(data.inputs) - len(todo)}
    bar = _progress(len(todo), data.track, show_progress)
    step = lm.batch_size
    for s in range(0, len(todo), step):
        chunk = todo[s : s + step]
        views = [model_view(data.track, r) for r in chunk]
        prompts = [_prompt(lm, data.track, v, settings) for v in views]
        state: list[dict[str, Any]] = [
            {"attempts": 0, "repairs": [], "error": None, "raw": "", "fields": None} for _ in chunk
        ]
        pending = list(range(len(chunk)))
        messages = [p[0] for p in prompts]
        for attempt in range(settings.max_retries + 1):
            if not pending:
                break
            try:
                texts = lm.generate(
                    [lm.render(messages[i], prompts[i][1]) for i in pending],
                    max_new,
                    desc=f"{data.track} try {attempt + 1}",
                )
            except Exception as exc:  # a decoding failure fails the rows, it does not stop the run
                for i in pending:
                    state[i].update(attempts=state[i]["attempts"] + 1, error=f"{type(exc).__name__}: {exc}")
                break
            still = []
            for i, text in zip(pending, texts):
                # a server that cannot continue a pre-fill (EndpointLM(prefill=False)) writes the whole JSON
                full = (prompts[i][1] if getattr(lm, "prefill", True) else "") + text
                st = state[i]
                st["attempts"] += 1
                st["raw"] = full
                try:
                    try:
                        fields, repairs = parse_prediction(data.track, full)
                    except OutputParseError as first:  # the model may restart the JSON instead
                        try:
                            fields, repairs = parse_prediction(data.track, text)
                        except OutputParseError:
                            raise first from None  # report what is wrong with the answer as continued
                        repairs = ["ignored the pre-fill", *repairs]
                    st.update(fields=fields, repairs=repairs, error=None)
                except OutputParseError as exc:
                    st["error"] = str(exc)
                    messages[i] = retry_messages(prompts[i][0], full, str(exc), EXPECTED_SHAPE[task])
                    still.append(i)
            pending = still
        for row, view, st in zip(chunk, views, state):
            bid = row["benchmark_id"]
            if st["fields"] is None:
                out = failure_row(data.track, bid)
                log = {
                    "status": "failed",
                    "attempts": st["attempts"],
                    "error": st["error"],
                    "raw_output": st["raw"][: settings.max_raw_chars],
                }
            else:
                fields = dict(st["fields"])
                if task == "task2" and settings.t2_mode == "edit":
                    fields["memory_items"] = merge_memory_edits(view["memory"], fields["memory_items"])
                if task == "task4":
                    out = {
                        "benchmark_id": bid,
                        "answer": fields["answer"],
                        "used_memory_fact": fields["used_memory_fact"],
                    }
                else:
                    out = {"benchmark_id": bid, "memory_items": fields["memory_items"]}
                status = "retried" if st["attempts"] > 1 else ("repaired" if st["repairs"] else "ok")
                log = {"status": status, "attempts": st["attempts"], "repairs": st["repairs"]}
            counts[log["status"]] += 1
            writer.write(out, log)
        bar.update(len(chunk))
    bar.close()
    return counts


def run_retrieval_track(
    predict_many: Callable[[list[dict[str, Any]]], list[dict[str, str]]],
    data: TrackData,
    writer: PredictionWriter,
    batch_size: int = 8,
    show_progress: bool = True,
    desc: str | None = None,
) -> dict[str, int]:
    """T3 with a retriever or the LM re-ranker (``predict_many(views) -> contract fields``)."""
    todo = [r for r in data.inputs if r["benchmark_id"] not in writer.done]
    counts = {"ok": 0, "failed": 0, "skipped": len(data.inputs) - len(todo)}
    bar = _progress(len(todo), desc or data.track, show_progress)
    for s in range(0, len(todo), batch_size):
        chunk = todo[s : s + batch_size]
        views = [model_view(data.track, r) for r in chunk]
        try:
            results: list[dict[str, str] | None] = list(predict_many(views))
            error = None
        except Exception as exc:
            results, error = [None] * len(chunk), f"{type(exc).__name__}: {exc}"
        for row, res in zip(chunk, results):
            bid = row["benchmark_id"]
            if res is None or not res.get("selected_memory_id"):
                out = failure_row(data.track, bid)
                log = {
                    "status": "failed",
                    "attempts": 1,
                    "error": error or (res or {}).get("reason", "no selection"),
                }
            else:
                out = {
                    "benchmark_id": bid,
                    "answer": res["answer"],
                    "reason": res["reason"],
                    "selected_memory_id": res["selected_memory_id"],
                }
                log = {"status": "ok", "attempts": 1}
            counts[log["status"]] += 1
            writer.write(out, log)
        bar.update(len(chunk))
    bar.close()
    return counts


def run_copy_baseline(data: TrackData, writer: PredictionWriter) -> dict[str, int]:
    """T2's no-op baseline: the existing memory returned unchanged (what an update must beat)."""
    todo = [r for r in data.inputs if r["benchmark_id"] not in writer.done]
    for row in todo:
        items = model_view(data.track, row)["memory"]
        writer.write(
            {"benchmark_id": row["benchmark_id"], "memory_items": items}, {"status": "ok", "attempts": 0}
        )
    return {"ok": len(todo), "failed": 0, "skipped": len(data.inputs) - len(todo)}
