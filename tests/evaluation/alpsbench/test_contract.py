"""Prediction files in the release contract: each way to break it gives a clear error."""

from __future__ import annotations

import json

import pytest

from flythinker.evaluation.alpsbench.contract import (
    PredictionContractError,
    failure_row,
    load_predictions,
    validate_prediction_row,
)


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


T3 = {"benchmark_id": "a", "answer": "", "reason": "", "selected_memory_id": "m1"}


def test_valid_file_in_input_order(tmp_path):
    rows = [dict(T3, benchmark_id="b"), dict(T3, benchmark_id="a")]
    got = load_predictions(_write(tmp_path / "p.jsonl", rows), "task3_d100", ["a", "b"])
    assert list(got) == ["a", "b"]


def test_missing_row(tmp_path):
    with pytest.raises(
        PredictionContractError, match=r"1 of 2 task3_d100 input row\(s\) have no prediction.*'b'"
    ):
        load_predictions(_write(tmp_path / "p.jsonl", [T3]), "task3_d100", ["a", "b"])


def test_duplicate_row(tmp_path):
    with pytest.raises(
        PredictionContractError,
        match=r"p.jsonl:2: benchmark_id 'a' is predicted twice \(first at .*p.jsonl:1\)",
    ):
        load_predictions(_write(tmp_path / "p.jsonl", [T3, T3]), "task3_d100", ["a"])


def test_extra_and_missing_keys(tmp_path):
    with pytest.raises(
        PredictionContractError, match=r"p.jsonl:1: benchmark_id 'a'.*extra key\(s\) \['gold'\]"
    ):
        load_predictions(_write(tmp_path / "p.jsonl", [dict(T3, gold={})]), "task3_d100", ["a"])
    with pytest.raises(PredictionContractError, match=r"missing key\(s\) \['reason'\]"):
        validate_prediction_row("task3_d300", {k: v for k, v in T3.items() if k != "reason"})
    with pytest.raises(
        PredictionContractError, match=r"exactly the keys \['benchmark_id', 'answer', 'used_memory_fact'\]"
    ):
        validate_prediction_row("task4_ability1", {"benchmark_id": "a", "answer": ""})


def test_wrong_types(tmp_path):
    with pytest.raises(
        PredictionContractError,
        match=r"p.jsonl:1: benchmark_id 'a': field 'selected_memory_id' must be a string, got int",
    ):
        load_predictions(_write(tmp_path / "p.jsonl", [dict(T3, selected_memory_id=3)]), "task3_d100", ["a"])
    with pytest.raises(PredictionContractError, match="field 'memory_items' must be a JSON array, got dict"):
        validate_prediction_row("task1", {"benchmark_id": "a", "memory_items": {}})
    with pytest.raises(PredictionContractError, match=r"memory_items\[1\] must be a JSON object, got str"):
        validate_prediction_row("task2", {"benchmark_id": "a", "memory_items": [{}, "x"]})
    with pytest.raises(PredictionContractError, match="must be a JSON object, got list"):
        validate_prediction_row("task1", [])
    with pytest.raises(PredictionContractError, match="field 'benchmark_id' must be a string"):
        validate_prediction_row("task4_ability2", {"benchmark_id": 7, "answer": "", "used_memory_fact": ""})


def test_unknown_id_and_bad_json(tmp_path):
    with pytest.raises(PredictionContractError, match="benchmark_id 'zz' is not an input row of task3_d100"):
        load_predictions(_write(tmp_path / "p.jsonl", [dict(T3, benchmark_id="zz")]), "task3_d100", ["a"])
    with pytest.raises(PredictionContractError, match=r"p.jsonl:2: not valid JSON"):
        load_predictions(_write(tmp_path / "p.jsonl", [T3, "{oops"]), "task3_d100", ["a"])
    with pytest.raises(PredictionContractError, match="no such predictions file"):
        load_predictions(tmp_path / "absent.jsonl", "task1", ["a"])


@pytest.mark.parametrize("track", ["task1", "task2", "task3_d100", "task4_ability5"])
def test_failure_rows_follow_the_contract(track):
    row = failure_row(track, "x")
    validate_prediction_row(track, row)
    assert row["benchmark_id"] == "x"
    assert all(v in ([], "") for k, v in row.items() if k != "benchmark_id")
