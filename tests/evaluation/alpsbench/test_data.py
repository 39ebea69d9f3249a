"""Reading the release layout, row validation errors, and what a model may see."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from flythinker.evaluation.alpsbench.data import (
    AlpsBenchDataError,
    discover_tracks,
    load_split,
    load_track,
    model_view,
    resolve_split_dir,
    select_tracks,
)
from flythinker.evaluation.alpsbench.prompts import task3_select_messages
from flythinker.evaluation.alpsbench.runners import RunnerSettings, _prompt
from tests.evaluation.alpsbench._fakes import EXAMPLES, FakeLM, examples

ALL_TRACKS = ["task1", "task2", "task3_d100"] + [f"task4_ability{k}" for k in range(1, 6)]


def test_examples_split_loads():
    loaded = examples()
    assert list(loaded) == ALL_TRACKS
    for td in loaded.values():
        assert len(td.inputs) == 1 and set(td.references) == {td.inputs[0]["benchmark_id"]}
    assert loaded["task3_d100"].level == 100 and loaded["task4_ability5"].ability == "ability5"


def test_split_resolution(tmp_path):
    assert resolve_split_dir(EXAMPLES.parent, "examples").resolve() == EXAMPLES.resolve()
    assert resolve_split_dir(EXAMPLES, "dev").resolve() == EXAMPLES.resolve()  # DIR already is a split
    (tmp_path / "benchmark_data").mkdir()
    shutil.copytree(EXAMPLES, tmp_path / "benchmark_data" / "validation")
    assert resolve_split_dir(tmp_path, "validation") == tmp_path / "benchmark_data" / "validation"
    with pytest.raises(AlpsBenchDataError, match="found neither dev/ nor task1"):
        resolve_split_dir(tmp_path / "benchmark_data" / "validation" / "task3", "dev")
    with pytest.raises(AlpsBenchDataError, match="no such directory"):
        resolve_split_dir(tmp_path / "nope", "dev")


def test_release_spelling_task4_abilityK_and_level_order(tmp_path):
    split = tmp_path / "dev"
    for level in ("d1000", "d300", "d100"):
        shutil.copytree(EXAMPLES / "task3" / "d100", split / "task3" / level)
    (split / "task3" / "notes").mkdir()  # not a level
    for k in (2, 1):
        shutil.copytree(
            EXAMPLES / "task4" / f"ability{k}", split / f"task4_ability{k}"
        )  # the release's spelling
    tracks = discover_tracks(split)
    assert list(tracks) == ["task3_d100", "task3_d300", "task3_d1000", "task4_ability1", "task4_ability2"]
    assert select_tracks(list(tracks), "t4") == ["task4_ability1", "task4_ability2"]
    loaded = load_split(split, None, "t3")
    assert [td.level for td in loaded.values()] == [100, 300, 1000]


def test_track_selection():
    names = ALL_TRACKS
    assert select_tracks(names, "t3") == ["task3_d100"]
    assert select_tracks(names, "t1,t4") == ["task1"] + names[3:]
    assert select_tracks(names, "all") == names
    assert select_tracks(names, "task4_ability2,t2") == ["task4_ability2", "task2"]
    with pytest.raises(AlpsBenchDataError, match="unknown or absent track 't5'"):
        select_tracks(names, "t5")


def _copy_track(tmp_path, track_dir):
    dst = tmp_path / "t"
    shutil.copytree(EXAMPLES / track_dir, dst)
    return dst


def _rewrite(path, mutate, line=0):
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    mutate(rows[line])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize(
    "mutate,message",
    [
        (
            lambda r: r["input"].pop("candidate_memories"),
            r"model_input.jsonl:1: field 'input.candidate_memories' is missing",
        ),
        (
            lambda r: r["input"].__setitem__("query", 5),
            r"model_input.jsonl:1: field 'input.query' must be a string, got int",
        ),
        (lambda r: r.__setitem__("benchmark_id", ""), r"model_input.jsonl:1: field 'benchmark_id' is empty"),
        (lambda r: r.__setitem__("task", "task1"), r"field 'task' is 'task1' in a task3_d100 file"),
        (
            lambda r: r["input"]["candidate_memories"][3].pop("memory_id"),
            r"field 'input.candidate_memories\[3\].memory_id' must be a string",
        ),
    ],
)
def test_input_errors_name_file_line_field(tmp_path, mutate, message):
    d = _copy_track(tmp_path, "task3/d100")
    _rewrite(d / "model_input.jsonl", mutate)
    with pytest.raises(AlpsBenchDataError, match=message):
        load_track("task3_d100", d)


def test_reference_errors(tmp_path):
    d = _copy_track(tmp_path, "task2")
    _rewrite(d / "reference_output.jsonl", lambda r: r["gold"].__setitem__("answer", {}))
    with pytest.raises(
        AlpsBenchDataError, match=r"reference_output.jsonl:1: field 'gold.answer' must be a list"
    ):
        load_track("task2", d)
    _rewrite(
        d / "reference_output.jsonl",
        lambda r: (r["gold"].__setitem__("answer", []), r.__setitem__("benchmark_id", "zz")),
    )
    with pytest.raises(AlpsBenchDataError, match="benchmark_id 'zz' has no row in"):
        load_track("task2", d)
    (d / "reference_output.jsonl").unlink()
    assert load_track("task2", d).references is None  # a test split
    with pytest.raises(AlpsBenchDataError, match="scoring needs the reference rows"):
        load_track("task2", d, require_references=True)


def test_duplicate_and_bad_json_lines(tmp_path):
    d = _copy_track(tmp_path, "task1")
    line = (d / "model_input.jsonl").read_text()
    (d / "model_input.jsonl").write_text(line + "\n" + line)
    with pytest.raises(
        AlpsBenchDataError, match=r"model_input.jsonl:3: benchmark_id 'sess_c45b38cdd64d__1' repeats line 1"
    ):
        load_track("task1", d)
    (d / "model_input.jsonl").write_text(line + "{bad\n")
    with pytest.raises(AlpsBenchDataError, match=r"model_input.jsonl:2: not valid JSON"):
        load_track("task1", d)


SECRETS = ("SECRET-GOLD", "SECRET-META", "SECRET-AUDIT")


def _poisoned(row):
    row = copy.deepcopy(row)
    row["gold"] = {"selected_memory_id": "SECRET-GOLD", "answer": [{"value": "SECRET-GOLD"}]}
    row["input"].setdefault("metadata", {})["secret"] = "SECRET-META"
    row["input"]["audit_context"] = {"conversation": [{"role": "user", "text": "SECRET-AUDIT"}]}
    row["input"]["gold"] = "SECRET-GOLD"
    return row


def test_no_gold_or_metadata_reaches_a_prompt():
    loaded = examples()
    lm = FakeLM()
    settings = RunnerSettings()
    for track, td in loaded.items():
        row = _poisoned(td.inputs[0])
        view = model_view(track, row)
        if td.task == "task3":
            texts = [json.dumps(task3_select_messages(view, view["candidate_memories"][:5]))]
        else:
            messages, prefill = _prompt(lm, track, view, settings)
            texts = [json.dumps(messages, ensure_ascii=False) + prefill]
        text = "\n".join(texts) + json.dumps(view)
        for secret in SECRETS:
            assert secret not in text, (track, secret)
    # task2's real metadata names the target memory: none of it is in the prompt
    td = loaded["task2"]
    view = model_view("task2", td.inputs[0])
    messages, _ = _prompt(lm, "task2", view, settings)
    text = json.dumps(messages)
    assert "fake_memory" not in text and "controls" not in text and "metadata" not in json.dumps(view)
    # gold-only items of the reference never appear in the prompt
    assert "m_new_1" not in text and "m3_updated" not in text


def test_prompts_fit_the_budget():
    loaded = examples()
    for budget in (4000, 8000):  # characters here; the fixed part of the T2 prompt is ~3100
        lm = FakeLM(max_prompt_tokens=budget)
        for track in ("task1", "task2", "task4_ability4"):
            view = model_view(track, loaded[track].inputs[0])
            messages, prefill = _prompt(lm, track, view, RunnerSettings())
            assert lm.count(messages, prefill) <= budget, track
            assert "[...]" in json.dumps(messages) or lm.count(messages, prefill) < budget
    # the newest turns are the ones kept
    view = model_view("task4_ability4", loaded["task4_ability4"].inputs[0])
    messages, _ = _prompt(FakeLM(max_prompt_tokens=2500), "task4_ability4", view, RunnerSettings())
    last = view["dialogue_history"][-1]["text"][:50]
    first = view["dialogue_history"][0]["text"][:50]
    text = json.loads(messages[1]["content"])
    assert text["latest_query"] == view["query"]
    assert any(t["text"].startswith(last[:20]) for t in text["dialogue_history"])
    assert (
        not any(t["text"].startswith(first) for t in text["dialogue_history"])
        or len(view["dialogue_history"]) < 3
    )


def test_load_split_limit():
    loaded = load_split(EXAMPLES, None, "t1")
    assert list(loaded) == ["task1"]
    assert loaded["task1"].limited(0).inputs == [] and loaded["task1"].limited(0).references == {}
