"""JSON repair, the bounded retry, failure rows, resumable prediction files (a scripted LM, no model)."""

from __future__ import annotations

import json

import pytest

from flythinker.evaluation.alpsbench.contract import load_predictions
from flythinker.evaluation.alpsbench.parsing import OutputParseError, extract_json, parse_prediction
from flythinker.evaluation.alpsbench.runners import (
    PredictionWriter,
    RunnerSettings,
    merge_memory_edits,
    run_generative_track,
    run_retrieval_track,
)
from tests.evaluation.alpsbench._fakes import FakeLM, examples, read_jsonl, replicated


def test_extract_json_variants():
    assert extract_json('Sure!\n```json\n{"a": [1, 2]}\n```\nbye') == ({"a": [1, 2]}, [])
    assert extract_json('{"a": 1,}') == ({"a": 1}, ["removed trailing commas"])
    value, repairs = extract_json('{"memory_items": [{"label": "A", "value": "cut her')
    assert value == {"memory_items": [{"label": "A", "value": "cut her"}]} and repairs == [
        "closed a truncated value"
    ]
    value, repairs = extract_json('{"memory_items": [{"label": "A"}, {"label": "B", "val')
    assert value == {"memory_items": [{"label": "A"}, {"label": "B"}]} and repairs[0].startswith("cut 1")
    assert extract_json('{"x": "a \\" } still string"}')[0] == {"x": 'a " } still string'}
    assert extract_json('{"a": "中文", "b": {"c":')[0] == {"a": "中文", "b": {"c": None}}
    # unescaped quotes inside a string (SmolLM2 wrote this for a CF row), cut off by the token limit
    raw = '{"used_memory_fact": "The sentence uses "you" and "at now", which is wrong. The sen'
    value, repairs = extract_json('Note "this": ' + raw)
    assert value == {"used_memory_fact": 'The sentence uses "you" and "at now", which is wrong. The sen'}
    assert repairs == ["escaped stray quotes", "closed a truncated value"]
    for bad in ("no json here", '{"a": tru e}'):
        with pytest.raises(OutputParseError):
            extract_json(bad)


def test_parse_prediction_per_task():
    fields, repairs = parse_prediction("task1", '[{"label": "A"}, 3]')
    assert fields == {"memory_items": [{"label": "A"}]}
    assert repairs == ["wrapped a bare list as memory_items", "dropped 1 non-object item(s)"]
    assert parse_prediction("task2", '{"answer": []}')[0] == {"memory_items": []}
    fields, repairs = parse_prediction("task4_ability1", '{"answer": "Hi", "used_memory_fact": ["a", 1]}')
    assert fields == {"used_memory_fact": '["a", 1]', "answer": "Hi"} and len(repairs) == 1
    # issue 24 item 4: a truncated, missing or empty answer is a failure, never an empty answer
    for cut, why in (
        ('{"used_memory_fact": "likes tea", "answer": "Hi', "cut off"),
        ('{"answer": "Hi there", "used_memory_fact": "likes', "cut off"),
        ('{"used_memory_fact": "likes tea"}', "no 'answer'"),
        ('{"answer": "  ", "used_memory_fact": "likes tea"}', "answer is empty"),
        ('{"answer": "x"}', "no 'used_memory_fact'"),
    ):
        with pytest.raises(OutputParseError, match=why):
            parse_prediction("task4_ability2", cut)
    with pytest.raises(OutputParseError, match="no 'memory_items'"):
        parse_prediction("task1", '{"items": []}')


def test_merge_memory_edits():
    existing = [{"memory_id": "m1", "value": "a", "label": "L"}, {"memory_id": "m2", "value": "b"}]
    merged = merge_memory_edits(
        existing,
        [
            {"memory_id": "m2", "value": "B"},
            {"value": "new"},
            {"memory_id": "m1", "label": "L2"},
            {"memory_id": "m1x", "value": "n2"},
        ],
    )
    assert merged == [
        {"memory_id": "m1", "value": "a", "label": "L2"},
        {"memory_id": "m2", "value": "B"},
        {"memory_id": "m3", "value": "new"},
        {"memory_id": "m1x", "value": "n2"},
    ]
    assert existing[1]["value"] == "b"  # inputs untouched


def test_retry_then_failure_rows_are_written(tmp_path):
    td = replicated(examples()["task4_ability2"], 3)

    def respond(prompt):
        return respond.queue.pop(0)

    # call 1 (rows 0, 1): row 0 continues the pre-fill, row 1 breaks the JSON; the retry of row 1 restarts
    # the JSON (accepted); call 2 (row 2): broken, and broken again on its one retry
    bad = 'a": 1} garbage'  # after the pre-fill: a complete but invalid object, which no repair fixes
    respond.queue = [
        'ok", "used_memory_fact": "owns a Tesla"}',
        bad,
        '{"used_memory_fact": "x", "answer": "y"}',
        bad,
        bad + " still",
    ]
    lm = FakeLM(respond=respond, batch_size=2)
    writer = PredictionWriter(tmp_path / "task4_ability2", td.track)
    counts = run_generative_track(lm, td, writer, RunnerSettings(max_retries=1), show_progress=False)
    assert counts == {"ok": 1, "repaired": 0, "retried": 1, "failed": 1, "skipped": 0}
    preds = load_predictions(writer.path, td.track, [r["benchmark_id"] for r in td.inputs])  # contract holds
    rows = list(preds.values())
    assert rows[0]["used_memory_fact"] == "owns a Tesla"
    assert rows[1] == {"benchmark_id": td.inputs[1]["benchmark_id"], "answer": "y", "used_memory_fact": "x"}
    assert rows[2] == {"benchmark_id": td.inputs[2]["benchmark_id"], "answer": "", "used_memory_fact": ""}
    log = read_jsonl(writer.log_path)
    assert [e["status"] for e in log] == ["ok", "retried", "failed"]
    assert log[1]["repairs"] == ["ignored the pre-fill"]
    assert (
        log[2]["attempts"] == 2
        and "invalid JSON" in log[2]["error"]
        and "garbage still" in log[2]["raw_output"]
    )
    # the retry prompt quotes the error and the failed answer
    retry = [p for p in lm.prompts if "could not be used" in p]
    assert len(retry) == 2 and "garbage" in retry[0]


def test_decoding_exception_fails_rows_not_the_run(tmp_path):
    td = replicated(examples()["task1"], 2)

    def respond(prompt):
        raise RuntimeError("out of memory")

    writer = PredictionWriter(tmp_path / "t1", td.track)
    counts = run_generative_track(FakeLM(respond=respond), td, writer, RunnerSettings(), show_progress=False)
    assert counts["failed"] == 2
    assert [e["error"] for e in read_jsonl(writer.log_path)] == ["RuntimeError: out of memory"] * 2
    assert all(r["memory_items"] == [] for r in read_jsonl(writer.path))


def test_killed_run_resumes_without_duplicates(tmp_path):
    td = replicated(examples()["task1"], 5)
    out = tmp_path / "task1"
    good = '{"memory_items": [{"label": "Preferences/Food", "value": "eggs", "type": "direct"}]}'
    lm = FakeLM(respond=lambda p: good[len('{"memory_items": [') :], batch_size=2, fail_after_calls=1)
    with pytest.raises(KeyboardInterrupt):
        run_generative_track(lm, td, PredictionWriter(out, td.track), RunnerSettings(), show_progress=False)
    assert len(read_jsonl(out / "predictions.jsonl")) == 2  # the first batch was flushed row by row
    # a kill in the middle of writing leaves half a line; the log has a line whose prediction is missing
    with open(out / "predictions.jsonl", "a") as handle:
        handle.write('{"benchmark_id": "sess_c45b38cdd64d__1#2", "memory_')
    with open(out / "log.jsonl", "a") as handle:
        handle.write(json.dumps({"benchmark_id": "sess_c45b38cdd64d__1#2", "status": "ok"}) + "\n")
    lm2 = FakeLM(respond=lambda p: good[len('{"memory_items": [') :], batch_size=2)
    writer = PredictionWriter(out, td.track)
    assert writer.done == {"sess_c45b38cdd64d__1#0", "sess_c45b38cdd64d__1#1"}
    counts = run_generative_track(lm2, td, writer, RunnerSettings(), show_progress=False)
    assert counts["skipped"] == 2 and lm2.calls == 2  # rows 2, 3 then 4
    ids = [r["benchmark_id"] for r in read_jsonl(out / "predictions.jsonl")]
    assert ids == [r["benchmark_id"] for r in td.inputs]  # each once, in order
    assert [e["benchmark_id"] for e in read_jsonl(out / "log.jsonl")] == ids
    # a finished run re-run does nothing
    assert (
        run_generative_track(lm2, td, PredictionWriter(out, td.track), RunnerSettings(), show_progress=False)[
            "skipped"
        ]
        == 5
    )
    with pytest.raises(ValueError, match="already written"):
        PredictionWriter(out, td.track).write({"benchmark_id": ids[0], "memory_items": []}, {"status": "ok"})


def test_writer_refuses_a_file_with_duplicates(tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    row = json.dumps({"benchmark_id": "a", "memory_items": []})
    (out / "predictions.jsonl").write_text(row + "\n" + row + "\n")
    with pytest.raises(ValueError, match="written twice"):
        PredictionWriter(out, "task1")


def test_t2_edit_mode_merges_into_the_existing_memory(tmp_path):
    td = examples()["task2"]
    edit = '{"memory_id": "m3", "value": "Master from ENIT"}, {"label": "States_Experiences/Past_Experience", "value": "470 class sailing"}]}'
    writer = PredictionWriter(tmp_path / "t2", td.track)
    run_generative_track(
        FakeLM(respond=lambda p: edit), td, writer, RunnerSettings(t2_mode="edit"), show_progress=False
    )
    (row,) = read_jsonl(writer.path)
    existing = td.inputs[0]["input"]["memory"]
    assert len(row["memory_items"]) == len(existing) + 1
    assert (
        row["memory_items"][2]["value"] == "Master from ENIT"
        and row["memory_items"][2]["label"] == existing[2]["label"]
    )
    assert row["memory_items"][-1]["memory_id"] == f"m{len(existing) + 1}"


def test_retrieval_track_failure_row(tmp_path):
    td = replicated(examples()["task3_d100"], 2)
    writer = PredictionWriter(tmp_path / "t3", td.track)

    def predict_many(views):
        return [
            {"answer": "", "reason": "r", "selected_memory_id": "m3"},
            {"answer": "", "reason": "none", "selected_memory_id": ""},
        ]

    counts = run_retrieval_track(predict_many, td, writer, show_progress=False)
    assert counts == {"ok": 1, "failed": 1, "skipped": 0}
    rows = read_jsonl(writer.path)
    assert rows[0]["selected_memory_id"] == "m3" and rows[1]["selected_memory_id"] == ""
