"""`flythinker generate` writes each finished record at once and resumes a killed run exactly (issue 16)."""

from __future__ import annotations

import json

import pytest

from flythinker import predict
from flythinker.cli import main
from flythinker.train.readers import read_records
from tests.reliability.conftest import kill_when, line_count, run_cli, start_cli


def _argv(workspace, model_dir, run_dir, **extra):
    options = {
        "--max-records": "10",
        "--max-length": "256",
        "--max-target-tokens": "32",
        "--max-new-tokens": "24",
        "--batch-size": "2",
        "--schedule": "sequential",
        "--do-sample": "true",  # sampled (seeded per batch): the outputs vary, so equality means something
        "--top-k": "50",
        **extra,
    }
    argv = ["generate", "--model", str(model_dir), "--data", workspace["train"], "--run-dir", str(run_dir)]
    for key, value in options.items():
        argv += [key, value]
    return argv


@pytest.mark.slow
def test_kill_9_at_several_points_then_resume_equals_an_uninterrupted_run(
    workspace, tiny_model_dir, tmp_path
):
    straight = tmp_path / "straight"
    assert run_cli(_argv(workspace, tiny_model_dir, straight)) == 0
    expected = (straight / "predictions.jsonl").read_bytes()
    assert expected.count(b"\n") == 10

    run = tmp_path / "killed"
    predictions = run / "predictions.jsonl"
    kills = []
    process = start_cli(_argv(workspace, tiny_model_dir, run))  # first: killed before any prediction
    kill_when(process, lambda: (run / "options.json").exists())
    for after_lines in (1, 4, 7):  # kill -9 once this many rows are on disk, then rerun the same command
        process = start_cli(_argv(workspace, tiny_model_dir, run))
        if kill_when(process, lambda n=after_lines: line_count(predictions) >= n):
            kills.append(line_count(predictions))
            if after_lines == 4:  # a kill in the middle of a write leaves a torn last line
                with open(predictions, "ab") as handle:
                    handle.write(b'{"index": 99, "predic')
    assert len(kills) >= 2 and all(n < 10 for n in kills), kills  # the kills did land mid-run
    assert run_cli(_argv(workspace, tiny_model_dir, run)) == 0
    assert predictions.read_bytes() == expected  # nothing lost, nothing written twice, same outputs
    assert (
        len({json.loads(line)["prediction"] for line in expected.splitlines()}) > 1
    )  # a non-trivial comparison
    stats = json.loads((run / "generation_stats.json").read_text())
    assert stats["records"] == 10 and stats["resumed_at_record"] >= 1


def test_rows_are_on_disk_before_the_next_batch_and_resume_skips_them(workspace, tmp_path):
    records = read_records(workspace["train"])[:3]
    log = predict.PredictionLog(tmp_path / "p.jsonl", records)
    assert log.resume() == 0
    log.append(0, [{"prediction": "a", "new_tokens": 1}, {"prediction": "b", "new_tokens": 1}])
    assert line_count(tmp_path / "p.jsonl") == 2  # flushed: visible to another process at once
    with open(tmp_path / "p.jsonl", "ab") as handle:
        handle.write(b'{"index": 2, "pred')  # torn by a kill
    again = predict.PredictionLog(tmp_path / "p.jsonl", records)
    assert again.resume() == 2
    assert line_count(tmp_path / "p.jsonl") == 2 and (tmp_path / "p.jsonl").read_bytes().endswith(b"\n")
    with pytest.raises(RuntimeError, match="out of order"):
        again.append(0, [{"prediction": "a"}])  # never writes a record twice


def test_finished_or_different_run_directory_is_refused(workspace, tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    argv = _argv(workspace, tiny_model_dir, run, **{"--max-records": "2", "--max-new-tokens": "2"})
    assert main(argv) == 0
    before = (run / "predictions.jsonl").read_bytes()
    assert main(argv) == 2
    assert "already holds a finished generation run" in capsys.readouterr().err
    (run / "generation_stats.json").unlink()  # now it looks interrupted, but the options differ
    assert main(_argv(workspace, tiny_model_dir, run, **{"--max-records": "2", "--max-new-tokens": "3"})) == 2
    assert "other options (max_new_tokens)" in capsys.readouterr().err
    assert (run / "predictions.jsonl").read_bytes() == before
    assert main([*argv, "--overwrite"]) == 0
