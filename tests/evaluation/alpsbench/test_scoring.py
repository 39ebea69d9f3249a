"""The release's local scorer (score_row) on hand-computed cases."""

from __future__ import annotations

import pytest

from flythinker.evaluation.alpsbench.scoring import normalize_text, score_row, summarize_scores


def _mem(label, value, type_="direct", **extra):
    return {"label": label, "value": value, "type": type_, **extra}


def test_normalize_text():
    assert normalize_text("  Hello,\n  WORLD!  ") == "hello, world!"  # punctuation kept
    assert normalize_text(None) == ""
    assert (
        normalize_text({"b": 1, "a": "É"}) == '{"a": "é", "b": 1}'
    )  # sort_keys, ensure_ascii=False, lowercased
    assert normalize_text(0.8) == "0.8" and normalize_text(["X"]) == '["x"]'


def test_task1_multiset_f1():
    gold = {
        "gold": {"memory_items": [_mem("A", "likes tea"), _mem("A", "likes tea"), _mem("B", "has a cat")]}
    }
    pred = {"memory_items": [_mem("a", "  Likes   TEA "), _mem("C", "x"), {"not": "scored"}, "junk"]}
    got = score_row("task1", pred, gold)
    # pred canonical: (a, likes tea, direct, "", "", ""), (c, x, ...), ("", "", "", ...) → 3 items, 1 hit
    assert got["precision"] == round(1 / 3, 6) and got["recall"] == round(1 / 3, 6)
    assert got["f1"] == round(1 / 3, 6) == got["main_score"] and got["exact_match"] == 0.0
    assert (got["pred_count"], got["reference_count"]) == (3, 3)
    # a duplicated gold item needs two matching predictions
    twice = score_row(
        "task1", {"memory_items": [_mem("A", "likes tea")] * 2 + [_mem("B", "has a cat")]}, gold
    )
    assert twice["f1"] == 1.0 and twice["exact_match"] == 1.0


def test_task1_fields_in_the_tuple():
    gold = {
        "gold": {
            "memory_items": [_mem("A", "v", time_scope="long_term", emotion=None, preference_attitude="like")]
        }
    }
    assert (
        score_row(
            "task1",
            {"memory_items": [_mem("A", "v", time_scope="LONG_TERM", preference_attitude="like")]},
            gold,
        )["f1"]
        == 1.0
    )  # missing emotion = None = ""
    assert (
        score_row(
            "task1",
            {"memory_items": [_mem("A", "v", time_scope="short_term", preference_attitude="like")]},
            gold,
        )["f1"]
        == 0.0
    )
    # confidence, memory_id, evidence are not part of the tuple
    assert (
        score_row(
            "task1",
            {
                "memory_items": [
                    _mem(
                        "A",
                        "v",
                        time_scope="long_term",
                        preference_attitude="like",
                        confidence=0.1,
                        memory_id="zz",
                    )
                ]
            },
            gold,
        )["f1"]
        == 1.0
    )


def test_both_empty_and_one_side_empty():
    empty = {"gold": {"memory_items": []}}
    assert score_row("task1", {"memory_items": []}, empty)["main_score"] == 1.0
    assert score_row("task1", {"memory_items": [_mem("A", "v")]}, empty)["main_score"] == 0.0
    assert (
        score_row("task1", {"memory_items": []}, {"gold": {"memory_items": [_mem("A", "v")]}})["main_score"]
        == 0.0
    )


def test_task2_uses_gold_answer():
    ref = {"gold": {"answer": [_mem("A", "old"), _mem("B", "新的记忆")]}}
    got = score_row(
        "task2", {"memory_items": [_mem("A", "old"), _mem("B", "新的记忆"), _mem("C", "extra")]}, ref
    )
    assert got["precision"] == round(2 / 3, 6) and got["recall"] == 1.0 and got["f1"] == 0.8
    assert (
        score_row("task2", {"benchmark_id": "x", "memory_items": []}, {"gold": {"answer": []}})["f1"] == 1.0
    )


def test_task3_id_or_value():
    ref = {"gold": {"selected_memory_id": "M3", "selected_memory": {"memory_id": "m3", "value": "Likes Tea"}}}
    assert score_row("task3_d100", {"selected_memory_id": " m3 "}, ref)["main_score"] == 1.0
    assert score_row("task3_d100", {"selected_memory_id": "m4"}, ref)["main_score"] == 0.0
    by_value = score_row(
        "task3_d1000", {"selected_memory_id": "", "selected_memory": {"value": "likes  tea"}}, ref
    )
    assert by_value == {"accuracy": 1.0, "memory_id_match": 0.0, "memory_value_match": 1.0, "main_score": 1.0}
    assert (
        score_row(
            "task3_d100",
            {"selected_memory_id": ""},
            {"gold": {"selected_memory_id": "", "selected_memory": {}}},
        )["main_score"]
        == 0.0
    )


@pytest.mark.parametrize(
    "fact,expected",
    [
        ("Owns a Tesla vehicle purchased 7 months ago", 1.0),  # equal
        ("  owns a TESLA vehicle ", 1.0),  # contained in the gold
        ("The user owns a tesla vehicle purchased 7 months ago, and more", 1.0),  # contains the gold
        ("owns a bmw", 0.0),
        ("", 0.0),
        ("   ", 0.0),
    ],
)
def test_task4_used_memory_fact(fact, expected):
    ref = {
        "gold": {
            "selected_memory": {"memory_id": "m1", "value": "Owns a Tesla vehicle purchased 7 months ago"}
        }
    }
    got = score_row("task4_ability2", {"answer": "hi", "used_memory_fact": fact}, ref)
    assert got["main_score"] == expected == got["grounding_accuracy"]
    assert got["response_present"] == 1.0


def test_task4_chinese_and_empty_gold():
    ref = {"gold": {"selected_memory": {"value": "一个月内必须去德国"}}}
    assert (
        score_row("task4_ability5", {"answer": "", "used_memory_fact": "必须去德国"}, ref)["main_score"]
        == 1.0
    )
    assert (
        score_row(
            "task4_ability5",
            {"answer": "", "used_memory_fact": "x"},
            {"gold": {"selected_memory": {"value": ""}}},
        )["main_score"]
        == 0.0
    )


def test_summaries_and_unknown_track():
    rows = [
        score_row(
            "task3_d100",
            {"selected_memory_id": i},
            {"gold": {"selected_memory_id": "m1", "selected_memory": {}}},
        )
        for i in ("m1", "m2", "m1")
    ]
    s = summarize_scores("task3_d100", rows)
    assert s["accuracy"] == s["main_score"] == round(2 / 3, 6) and s["num_rows"] == 3
    assert summarize_scores("task1", [])["main_score"] == 0.0
    with pytest.raises(ValueError, match="unknown AlpsBench track"):
        score_row("task9", {}, {})
