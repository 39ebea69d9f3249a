"""Metrics by output position on constructed cases, and the prediction / metrics writers."""

from __future__ import annotations

import json
import math

import pytest

from flythinker.evaluation import (
    metrics_by_position,
    read_predictions_jsonl,
    split_windows,
    write_metrics_json,
    write_predictions_jsonl,
)
from flythinker.train.records import PersonalizedRecord

WORDS = [f"w{i}" for i in range(120)]


def test_split_windows():
    text = " ".join(WORDS[:7])
    assert split_windows(text, window_words=3) == ["w0 w1 w2", "w3 w4 w5", "w6"]
    assert split_windows(text, num_windows=3) == ["w0 w1 w2", "w3 w4", "w5 w6"]
    assert split_windows("a b", num_windows=3) == ["a", "b", ""]
    assert split_windows("", window_words=5) == []
    with pytest.raises(ValueError, match="exactly one"):
        split_windows(text)


def test_fixed_windows_detect_drift(wordnet):
    ref = " ".join(WORDS[:100])
    drift = " ".join(WORDS[:50] + [f"z{i}" for i in range(50)])  # right for 50 words, then off
    short = " ".join(WORDS[:50])  # stops after 50 words
    rows = metrics_by_position([drift, short, ref], [ref, ref, ref], window_words=50)
    assert [r["window"] for r in rows] == [0, 1]
    assert rows[0]["start_word"] == 0 and rows[1]["end_word"] == 100
    assert rows[0]["n"] == rows[1]["n"] == 3
    assert rows[0]["rouge1"] == pytest.approx(1.0) and rows[0]["rougeL"] == pytest.approx(1.0)
    assert rows[1]["rouge1"] == pytest.approx(1 / 3)  # drift 0, short 0 (missing), exact 1
    assert rows[1]["n_missing"] == 1
    assert rows[0]["meteor"] > 0.99 and rows[1]["meteor"] == pytest.approx(rows[0]["meteor"] / 3)


def test_relative_windows_and_extra_text():
    ref = " ".join(WORDS[:40])
    pred = " ".join(WORDS[:20] + WORDS[100:120])  # first half right, second half wrong, same length
    rows = metrics_by_position([pred], [ref], window_words=None, num_windows=2, metrics=["rouge1"])
    assert [(r["start_frac"], r["end_frac"]) for r in rows] == [(0.0, 0.5), (0.5, 1.0)]
    assert rows[0]["rouge1"] == pytest.approx(1.0) and rows[1]["rouge1"] == pytest.approx(0.0)
    rows = metrics_by_position([ref + " extra words beyond"], [ref], window_words=40, metrics=["rouge1"])
    assert rows[1]["n"] == 0 and rows[1]["n_extra"] == 1 and math.isnan(rows[1]["rouge1"])
    with pytest.raises(ValueError, match="position metrics"):
        metrics_by_position([ref], [ref], metrics=["bleu"])


def test_write_predictions_and_metrics(tmp_path):
    recs = [
        PersonalizedRecord("u1", "req1", "ref1", [], "abstract_generation", id="a"),
        PersonalizedRecord("u2", "req2", "ref2", [], "abstract_generation"),
    ]
    path = write_predictions_jsonl(
        tmp_path / "run" / "predictions.jsonl",
        ["p1", "p2"],
        records=recs,
        extra=[{"new_tokens": 3}, {"new_tokens": 4}],
    )
    rows = read_predictions_jsonl(path)
    assert rows[0] == {
        "index": 0,
        "id": "a",
        "user_id": "u1",
        "request": "req1",
        "prediction": "p1",
        "reference": "ref1",
        "new_tokens": 3,
    }
    assert rows[1]["id"] is None and rows[1]["reference"] == "ref2"
    with pytest.raises(ValueError, match="references has 1 entries for 2 predictions"):
        write_predictions_jsonl(tmp_path / "x.jsonl", ["a", "b"], references=["r"])
    mpath = write_metrics_json(
        tmp_path / "run" / "metrics.json",
        {"rouge1": 0.5, "by_position": [{"window": 0, "rouge1": float("nan")}]},
    )
    assert json.loads(mpath.read_text()) == {"rouge1": 0.5, "by_position": [{"window": 0, "rouge1": None}]}
