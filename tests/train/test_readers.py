"""Readers: real PEP data, every source type, every record format, and located errors."""

from __future__ import annotations

import json
import os
import re

import pytest

from flythinker.train.readers import detect_task, read_records, read_splits, write_jsonl

# record counts stated in tests/fixtures/peps/README.md
PEP_COUNTS = {
    "user_train.jsonl": 40,
    "user_val.jsonl": 12,
    "temporal_train.jsonl": 20,
    "temporal_val.jsonl": 6,
}


def _raw_lines(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_pep_files_read_and_match_source(pep_files):
    for path in pep_files:
        records = read_records(path)
        raw = _raw_lines(path)
        name = os.path.basename(path)
        if name in PEP_COUNTS:
            assert len(records) == PEP_COUNTS[name]
        assert len(records) == len(raw)
        for rec, row in zip(records, raw):
            assert rec.task == "abstract_generation"
            assert rec.user_id == row["name"] and rec.request == row["input"] and rec.target == row["output"]
            assert rec.profile == row["profile"]
            assert all({"title", "abstract"} <= set(item) for item in rec.profile)
            assert rec.meta == {}


def test_read_splits_directory(pep_files):
    folder = os.path.dirname(pep_files[0])
    splits = read_splits(folder, prefix="temporal_")
    assert set(splits) == {"train", "val"}
    assert len(splits["train"]) == len(_raw_lines(os.path.join(folder, "temporal_train.jsonl")))


def test_all_source_types_agree(pep_files, tmp_path):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("pyarrow")
    rows = _raw_lines(pep_files[0])[:12]
    expected = read_records(rows)
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    js = tmp_path / "s.json"
    js.write_text(json.dumps(rows), encoding="utf-8")
    ds = datasets.Dataset.from_list(rows)
    pq = tmp_path / "s.parquet"
    ds.to_parquet(str(pq))
    dd = datasets.DatasetDict({"train": ds, "test": ds.select(range(3))})
    for source, kw in [(jsonl, {}), (str(js), {}), (pq, {}), (ds, {}), (dd, {"split": "train"})]:
        assert read_records(source, **kw) == expected, source
    assert read_splits(dd)["test"] == expected[:3]
    with pytest.raises(ValueError, match="pass split="):
        read_records(dd)


def test_other_longlamp_tasks_and_user_fields():
    review = {
        "user_id": "u1",
        "input": "Write a review for this product",
        "output": "Great.",
        "profile": [{"overall": 5.0, "summary": "ok", "reviewText": "It works.", "description": "A lamp"}],
    }
    topic = {
        "author": "a1",
        "id": "q7",
        "input": "Write a post",
        "output": "Text",
        "profile": [{"summary": "s", "content": "c"}],
    }
    (r,) = read_records([review])
    assert (r.task, r.user_id, r.id) == ("product_review", "u1", None)
    (t,) = read_records([topic])
    assert (t.task, t.user_id, t.id) == ("topic_writing", "a1", "q7")
    (i,) = read_records([{"id": 42, "input": "x", "output": "y", "profile": [{"content": "c"}]}])
    assert (i.user_id, i.id) == ("42", None)
    assert detect_task([{"title": "t", "abstract": "a"}]) == "abstract_generation"
    assert detect_task([{"foo": 1}]) is None


def test_reference_format():
    rows = [
        {"inp": "Write an abstract", "profile": "Title: A\nAbstract: B", "target": "T"},
        {"inp": "Write again", "profile": "", "target": "U", "extra": 1},
    ]
    a, b = read_records(rows)
    assert (a.task, a.request, a.target, a.profile) == (
        "reference",
        "Write an abstract",
        "T",
        [{"text": "Title: A\nAbstract: B"}],
    )
    assert b.profile == [] and b.meta == {"extra": 1}
    (c,) = read_records(rows[:1], task="abstract_generation")
    assert c.task == "abstract_generation" and c.profile == [{"text": "Title: A\nAbstract: B"}]


def test_require_target_false_and_extra_fields():
    row = {"name": "n", "input": "x", "profile": [], "synthetic": True}
    with pytest.raises(ValueError, match=r'field "output" is missing .*require_target=False'):
        read_records([row])
    (rec,) = read_records([row], require_target=False)
    assert rec.target is None and rec.meta == {"synthetic": True}


def _write_jsonl(tmp_path, rows, name="bad.jsonl"):
    path = tmp_path / name
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


GOOD = {
    "name": "n",
    "input": "Generate an abstract",
    "output": "o",
    "profile": [{"title": "t", "abstract": "a"}],
}


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            dict(GOOD, profile="just text"),
            'line 3: field "profile" must be a list of objects with "title" and "abstract", got str',
        ),
        ('{"name": "n", "input": ', "line 3: invalid JSON"),
        ("[1, 2]", "line 3: expected a JSON object (a record), got list"),
        (
            {k: v for k, v in GOOD.items() if k != "output"},
            'line 3: field "output" is missing (expected a string',
        ),
        (dict(GOOD, input=5), 'line 3: field "input" must be a string, got int'),
        ({k: v for k, v in GOOD.items() if k != "input"}, 'line 3: field "input" is missing'),
        (
            dict(GOOD, profile=[{"title": "t", "abstract": "a"}, {"title": "t2"}]),
            'line 3: field "profile" item 2 is missing "abstract" (task abstract_generation expects "title" and "abstract"',
        ),
        (
            dict(GOOD, profile=[{"title": "t", "abstract": 3}]),
            'line 3: field "profile" item 1 field "abstract" must be a string, got int',
        ),
        (
            dict(GOOD, profile=["t"]),
            'line 3: field "profile" item 1 must be an object with "title" and "abstract", got str',
        ),
        ({k: v for k, v in GOOD.items() if k != "profile"}, 'line 3: field "profile" is missing'),
        (dict(GOOD, name=["x"]), 'line 3: field "name" (user id) must be a string or integer, got list'),
        (
            {"inp": "x", "profile": ["a"], "target": "t"},
            'line 3: field "profile" of a reference-format record',
        ),
    ],
)
def test_malformed_jsonl_names_file_line_and_field(tmp_path, bad, message):
    # line 2 is blank: line numbers are physical lines, 1-based
    path = _write_jsonl(tmp_path, [GOOD, "", bad])
    with pytest.raises(ValueError) as info:
        read_records(path)
    assert str(info.value).startswith(f"{path} line 3: ")
    assert message in str(info.value)


def test_error_message_format_matches_the_documented_example(tmp_path):
    rows = [GOOD] * 16 + [dict(GOOD, profile="text")]
    path = _write_jsonl(tmp_path, rows, name="temporal_train.jsonl")
    with pytest.raises(ValueError) as info:
        read_records(path)
    assert str(info.value) == (
        f'{path} line 17: field "profile" must be a list of objects with "title" and "abstract", got str'
    )


def test_malformed_json_and_other_sources(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"records": []}))
    with pytest.raises(ValueError, match=re.escape(f"{path}: expected a JSON list of records")):
        read_records(path)
    path.write_text(json.dumps([GOOD, dict(GOOD, output=None)]))
    with pytest.raises(
        ValueError, match=re.escape(f'{path} record 2: field "output" must be a string, got null')
    ):
        read_records(path)
    with pytest.raises(ValueError, match=r'<records> record 1: field "profile" item 1 is missing "content"'):
        read_records([GOOD], task="topic_writing")
    with pytest.raises(ValueError, match="cannot detect the task"):
        read_records([dict(GOOD, profile=[{"foo": "bar"}])])
    with pytest.raises(ValueError, match="unknown task"):
        read_records([GOOD], task="poetry")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_records(tmp_path / "missing.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        read_records(tmp_path / "x.csv")


def test_write_jsonl_round_trip(tmp_path, pep_files):
    records = read_records(pep_files[0])[:5]
    out = tmp_path / "o.jsonl"
    write_jsonl(records, out, extra={"synthetic": False})
    back = read_records(out)
    assert [r.profile for r in back] == [r.profile for r in records]
    assert all(r.meta == {"synthetic": False} for r in back)
