"""Runs that cannot mix settings, refuse impossible options early, and say when every row failed (issue 24)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from flythinker.cli import main
from flythinker.evaluation.alpsbench.cli import all_failed_tracks
from flythinker.evaluation.alpsbench.manifest import RunSettingsError
from flythinker.evaluation.alpsbench.pipeline import check_context, run_alpsbench
from flythinker.evaluation.alpsbench.runners import RunnerSettings
from tests.evaluation.alpsbench._fakes import EXAMPLES, FakeLM, read_jsonl

GOOD_T4 = 'Try the bakery nearby.", "used_memory_fact": "owns a Tesla"}'


def _run(out, tracks, lm, settings=None, **kw):
    return run_alpsbench(
        EXAMPLES, None, tracks, out, lm=lm, settings=settings, baselines=(), show_progress=False, **kw
    )


def test_resume_with_other_settings_is_refused_listing_them(tmp_path):
    out = tmp_path / "run"
    lm = FakeLM(respond=lambda p: GOOD_T4)
    _run(out, "task4_ability1", lm, RunnerSettings(t4_max_new_tokens=192))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "fake-lm" and manifest["decoding"]["t4_max_new_tokens"] == 192
    assert set(manifest["data"]) == {"task4_ability1"}
    with pytest.raises(RunSettingsError, match=r"decoding.t4_max_new_tokens: 192 -> 4"):
        _run(out, "task4_ability1", lm, RunnerSettings(t4_max_new_tokens=4))
    other = FakeLM(respond=lambda p: GOOD_T4)
    other.name = "model-B"
    with pytest.raises(RunSettingsError, match=r"model: 'fake-lm' -> 'model-B'.*another --out"):
        _run(out, "task4_ability1", other, RunnerSettings(t4_max_new_tokens=192))
    # the refused runs wrote nothing: the summary still says 192 and one row
    again = _run(out, "task4_ability1", lm, RunnerSettings(t4_max_new_tokens=192))
    assert again["manifest"]["decoding"]["t4_max_new_tokens"] == 192
    assert again["run_counts"]["task4_ability1/fake-lm"]["skipped"] == 1


def test_a_narrower_rerun_keeps_the_other_tracks_in_the_reports(tmp_path):
    out = tmp_path / "run"
    lm = FakeLM(respond=lambda p: GOOD_T4)
    _run(out, "task4_ability1,task4_ability2", lm)
    _run(out, "task4_ability2", lm)
    summary = json.loads((out / "summary.json").read_text())
    assert {s["track"] for s in summary["tracks"]} == {"task4_ability1", "task4_ability2"}
    assert {r["track"] for r in read_jsonl(out / "scores.jsonl")} == {"task4_ability1", "task4_ability2"}
    assert "task4_ability1 (PA)" in (out / "summary.md").read_text()
    assert len(read_jsonl(out / "scores.jsonl")) == 2  # no row twice


def test_empty_answers_fail_and_an_all_failed_track_is_reported(tmp_path):
    lm = FakeLM(respond=lambda p: '", "used_memory_fact": "owns a Tesla"}')  # an empty answer
    summary = _run(tmp_path / "run", "task4_ability1", lm)
    (s,) = summary["tracks"]
    assert s["failed_rows"] == 1 and summary["run_counts"]["task4_ability1/fake-lm"]["failed"] == 1
    assert all_failed_tracks(summary) == ["task4_ability1/fake-lm"]  # the CLI then exits 1
    assert all_failed_tracks({"run_counts": {"t/m": {"ok": 1, "failed": 3}}, "tracks": []}) == []
    judged_none = {
        "track": "task1",
        "method": "m",
        "num_rows": 3,
        "paper_judge": {"rows_judged": 0, "rows_endpoint_error": 3},
    }
    assert all_failed_tracks({"tracks": [judged_none]}) == ["task1/m (paper judge: no row scored)"]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--max-new-tokens", "-5", "--max-new-tokens -5: must be at least 1"),
        ("--t4-max-new-tokens", "0", "--t4-max-new-tokens 0"),
        ("--t3-k", "12", "--t3-k 12: must lie in 1..9"),
        ("--batch-size", "0", "--batch-size 0"),
    ],
)
def test_impossible_options_stop_before_any_model_loads(tmp_path, capsys, option, value, message):
    rc = main(
        ["alpsbench", "run", "--data", str(EXAMPLES), "--out", str(tmp_path / "o"), "--model", "/no/such/model",
         option, value, "--no-progress"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc != 0 and message in err and "/no/such/model" not in err
    assert not (tmp_path / "o").exists()


def test_prompt_budget_beyond_the_model_context_is_refused():
    lm = SimpleNamespace(
        model=SimpleNamespace(config=SimpleNamespace(max_position_embeddings=2048)), max_prompt_tokens=2048
    )
    with pytest.raises(ValueError, match=r"exceeds the model's context of 2048.*at most 1664"):
        check_context(lm, RunnerSettings(max_new_tokens=256, t4_max_new_tokens=384))
    lm.max_prompt_tokens = 1600
    check_context(lm, RunnerSettings(max_new_tokens=256, t4_max_new_tokens=384))


def test_missing_references_outside_the_test_split_fail_before_any_row(tmp_path):
    import shutil

    data = tmp_path / "dev"
    shutil.copytree(EXAMPLES / "task1", data / "task1")
    (data / "task1" / "reference_output.jsonl").unlink()
    lm = FakeLM(respond=lambda p: "[]")
    with pytest.raises(ValueError, match="reference_output.jsonl: missing"):
        run_alpsbench(data, None, "all", tmp_path / "o", lm=lm, baselines=(), show_progress=False)
    assert lm.calls == 0
