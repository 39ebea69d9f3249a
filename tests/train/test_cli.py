"""The command line: every command documents every option; train → generate → evaluate end to end."""

from __future__ import annotations

import json

import pytest

from flythinker.cli import build_parser, main


@pytest.mark.parametrize("command", ["train", "generate", "evaluate", "demo", "convert"])
def test_every_option_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 12, f"{command} {action.option_strings} lacks help"
            assert action.option_strings[0] in text


def test_train_generate_evaluate_end_to_end(workspace, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--train-file",
            workspace["train"],
            "--output-dir",
            str(run),
            "--generator",
            str(workspace["root"] / "generator"),
            "--reasoner",
            str(workspace["root"] / "reasoner"),
            "--max-length",
            "256",
            "--max-target-tokens",
            "32",
            "--max-steps",
            "2",
            "--global-batch-size",
            "2",
            "--per-device-batch-size",
            "2",
            "--learning-rate",
            "1e-3",
            "--save-steps",
            "2",
        ]
    )
    assert code == 0
    assert json.loads((run / "options.json").read_text())["max_steps"] == 2
    code = main(
        [
            "generate",
            "--model",
            str(run / "model"),
            "--data",
            workspace["train"],
            "--run-dir",
            str(run / "gen"),
            "--max-records",
            "3",
            "--max-length",
            "256",
            "--max-target-tokens",
            "32",
            "--max-new-tokens",
            "5",
            "--batch-size",
            "2",
            "--schedule",
            "sequential",
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in (run / "gen" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(isinstance(r["prediction"], str) and r["reference"] for r in rows)
    assert all(0 <= r["new_tokens"] <= 5 for r in rows)
    code = main(
        ["evaluate", "--predictions", str(run / "gen" / "predictions.jsonl"), "--metrics", "rouge1", "rougeL"]
    )
    assert code == 0
    metrics = json.loads((run / "gen" / "metrics.json").read_text())
    assert 0.0 <= metrics["rouge1"] <= 1.0 and metrics["n"] == 3
    assert "by_position" in metrics


def test_evaluate_names_the_bad_record(tmp_path, capsys):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"prediction": "a b", "reference": "a b"}\n{"prediction": 3, "reference": "x"}\n')
    assert main(["evaluate", "--predictions", str(path)]) == 2
    err = capsys.readouterr().err
    assert "record 2" in err and "'prediction'" in err
