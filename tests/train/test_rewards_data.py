"""PERM / PersonaEmp readers: happy paths and located errors."""

from __future__ import annotations

import json

import pytest

from flythinker.train.rewards_data import (
    RewardDataError,
    read_perm_records,
    read_personaemp_sessions,
)


def _jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_perm_records(tmp_path):
    p = _jsonl(
        tmp_path / "perm.jsonl",
        [
            {
                "persona": {"identity": "a nurse, 34"},
                "scenario": "night shift",
                "dialogue": ["I am exhausted", "..."],
            },
            {"persona": "student", "scenario": "", "dialogue": [{"role": "user", "content": "I failed"}]},
        ],
    )
    recs = read_perm_records(p)
    assert [r.persona for r in recs] == ["a nurse, 34", "student"]
    assert [r.query for r in recs] == ["I am exhausted", "I failed"]
    s = recs[0].sample(analysis="tired", response="rest")
    assert (s.query, s.scenario, s.analysis) == ("I am exhausted", "night shift", "tired")


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"persona": "p", "scenario": "s"}, r"line 2: missing field 'dialogue'"),
        (
            {"persona": "p", "scenario": "s", "dialogue": []},
            r"line 2: field 'dialogue': expected a non-empty list",
        ),
        (
            {"persona": "p", "scenario": "s", "dialogue": [3]},
            r"line 2: field 'dialogue\[0\]': expected a string",
        ),
        (
            {"persona": ["x"], "scenario": "s", "dialogue": ["q"]},
            r"line 2: field 'persona': expected a string",
        ),
        ('{"persona": "p", ', r"line 2: invalid JSON"),
    ],
)
def test_perm_errors_name_file_line_field(tmp_path, row, match):
    p = _jsonl(tmp_path / "bad.jsonl", [{"persona": "p", "scenario": "s", "dialogue": ["q"]}, row])
    with pytest.raises(RewardDataError, match=match) as e:
        read_perm_records(p)
    assert str(p) in str(e.value)


def test_personaemp_sessions(tmp_path):
    session = {
        "persona": {"name": "Ana", "traits": "introvert"},
        "extracted_memory": ["has a cat", "works night shifts"],
        "queries": [
            {
                "query": "My cat is sick",
                "category": "health",
                "situation": "vet visit",
                "relevant_mem": ["has a cat"],
                "criteria": ["be gentle", "mention the cat"],
            },
            {
                "query": "Can't sleep",
                "category": "stress",
                "situation": "",
                "relevant_mem": [],
                "criteria": None,
            },
        ],
    }
    p = tmp_path / "pe.json"
    p.write_text(json.dumps([session]))
    (s,) = read_personaemp_sessions(p)
    assert s.persona == "name: Ana\ntraits: introvert"
    assert s.queries[0].criteria == "- be gentle\n- mention the cat"
    samples = s.samples()
    assert samples[0].memories == ["has a cat"] and samples[0].criteria == "- be gentle\n- mention the cat"
    assert samples[1].memories == ["has a cat", "works night shifts"] and samples[1].criteria is None
    assert samples[0].personalized


def test_personaemp_errors(tmp_path):
    bad = {"persona": "p", "queries": [{"query": "q", "relevant_mem": [1]}]}
    p = tmp_path / "pe.json"
    p.write_text(json.dumps([bad]))
    with pytest.raises(
        RewardDataError, match=r"record 0: queries\[0\]: field 'relevant_mem\[0\]': expected a string"
    ):
        read_personaemp_sessions(p)
    p.write_text(json.dumps([{"persona": "p", "queries": []}]))
    with pytest.raises(RewardDataError, match=r"record 0: field 'queries': expected a non-empty list"):
        read_personaemp_sessions(p)
    p.write_text(json.dumps({"persona": "p"}))
    with pytest.raises(RewardDataError, match="expected a JSON list"):
        read_personaemp_sessions(p)
    with pytest.raises(RewardDataError, match="file not found"):
        read_personaemp_sessions(tmp_path / "missing.jsonl")
