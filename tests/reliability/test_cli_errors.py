"""Every user-facing failure is one line (what, where, what to do); --debug adds the traceback (issue 16)."""

from __future__ import annotations

import shutil
import socket
import time

import pytest

from flythinker.cli import main


def _one_error_line(capsys, command):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if f"flythinker {command}: error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def _generate(model, data, run_dir, *extra):
    return [
        "generate",
        "--model",
        str(model),
        "--data",
        str(data),
        "--run-dir",
        str(run_dir),
        "--max-length",
        "256",
        "--max-target-tokens",
        "32",
        "--max-new-tokens",
        "2",
        *extra,
    ]


@pytest.fixture()
def model_copy(tiny_model_dir, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_model_dir, target)
    return target


def test_truncated_safetensors(model_copy, workspace, tmp_path, capsys):
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    assert main(_generate(model_copy, workspace["train"], tmp_path / "gen")) == 2
    line = _one_error_line(capsys, "generate")
    assert str(model_copy) in line and "truncated or corrupt" in line
    assert not (tmp_path / "gen").exists()


def test_corrupt_config_json(model_copy, workspace, tmp_path, capsys):
    (model_copy / "config.json").write_text('{"model_type": "flythinker", ')
    assert main(_generate(model_copy, workspace["train"], tmp_path / "gen")) == 2
    line = _one_error_line(capsys, "generate")
    assert "config.json" in line or "JSON" in line


def test_unknown_dtype_is_a_usage_error(tiny_model_dir, workspace, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(_generate(tiny_model_dir, workspace["train"], tmp_path / "gen", "--dtype", "float33"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "float33" in err and "float32" in err and "Traceback" not in err


def test_a_directory_given_as_a_data_file(tiny_model_dir, tmp_path, capsys):
    assert main(_generate(tiny_model_dir, tmp_path, tmp_path / "gen")) == 2
    assert "is a directory" in _one_error_line(capsys, "generate")


def test_a_file_given_as_the_model_directory(workspace, tmp_path, capsys):
    assert main(_generate(workspace["train"], workspace["train"], tmp_path / "gen")) == 2
    assert "is a file; expected a model directory" in _one_error_line(capsys, "generate")


def test_invalid_utf8_names_the_file_and_line(workspace, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    good = open(workspace["train"], "rb").readline()
    data.write_bytes(good + good[:20] + b"\xff\xfe" + good[22:])
    root = workspace["root"]
    assert (
        main(
            [
                "train",
                "--train-file",
                str(data),
                "--output-dir",
                str(tmp_path / "run"),
                "--generator",
                str(root / "generator"),
                "--max-length",
                "256",
                "--max-target-tokens",
                "32",
            ]
        )
        == 2
    )
    line = _one_error_line(capsys, "train")
    assert f"{data} line 2: invalid UTF-8" in line
    assert not (tmp_path / "run").exists()


def test_an_empty_dataset_fails_early_and_clearly(workspace, tmp_path, capsys):
    data = tmp_path / "empty.jsonl"
    data.write_text("\n")
    root = workspace["root"]
    started = time.monotonic()
    assert (
        main(
            [
                "train",
                "--train-file",
                str(data),
                "--output-dir",
                str(tmp_path / "run"),
                "--generator",
                str(root / "generator"),
                "--max-length",
                "256",
                "--max-target-tokens",
                "32",
            ]
        )
        == 2
    )
    line = _one_error_line(capsys, "train")
    assert "holds no records" in line and "num_samples" not in line
    assert not (tmp_path / "run").exists() and time.monotonic() - started < 30


def test_a_mistyped_relative_model_path_fails_at_once_without_network(
    workspace, tmp_path, capsys, monkeypatch
):
    lookups = []

    def no_network(*args, **kwargs):
        lookups.append(args)
        raise OSError("network access attempted")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for typo in ("runs/trian/model", "runs/modle", "./model", "model_dir"):
        started = time.monotonic()
        assert main(_generate(typo, workspace["train"], tmp_path / "gen")) == 2
        line = _one_error_line(capsys, "generate")
        assert f"--model {typo}: no such directory" in line
        assert time.monotonic() - started < 5
    assert lookups == []


def test_debug_adds_the_traceback(model_copy, workspace, tmp_path, capsys):
    (model_copy / "config.json").write_text("{")
    assert main(["--debug", *_generate(model_copy, workspace["train"], tmp_path / "gen")]) == 2
    assert "Traceback" in capsys.readouterr().err
    assert main([*_generate(model_copy, workspace["train"], tmp_path / "gen"), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
