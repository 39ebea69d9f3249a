"""Errors that used to send users the wrong way (issue 23): each is one line naming the file or option and
what to do."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from flythinker import FlyThinkerForCausalLM
from flythinker.cli import main
from flythinker.modeling.loading import CheckpointMismatchError
from tests.reliability.test_convert_tokenizer import reference_checkpoint  # noqa: F401  (fixture)


def _error(capsys, command):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if f"flythinker {command}: error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def _generate(model, data, run_dir, *extra):
    return ["generate", "--model", str(model), "--data", str(data), "--run-dir", str(run_dir), "--max-length",
            "256", "--max-target-tokens", "32", "--max-new-tokens", "2", *extra]  # fmt: skip


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_users_own_predictions_file_is_not_called_an_interrupted_run(
    workspace, tiny_model_dir, tmp_path, capsys, overwrite
):
    run = tmp_path / "mine"
    run.mkdir()
    mine = run / "predictions.jsonl"
    mine.write_text('{"prediction": "my own", "reference": "kept"}\n')
    argv = _generate(tiny_model_dir, workspace["train"], run, *(["--overwrite"] if overwrite else []))
    assert main(argv) == 2
    line = _error(capsys, "generate")
    assert "no `flythinker generate` run wrote" in line and "--overwrite" not in line
    assert mine.read_text() == '{"prediction": "my own", "reference": "kept"}\n'


def test_convert_without_reasoner_config_says_to_pass_it(reference_checkpoint, tmp_path, capsys):  # noqa: F811
    _, checkpoint, _ = reference_checkpoint  # the reasoner (width 16) differs from the generator (32)
    assert main(["convert", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")]) == 2
    assert "--reasoner-config" in _error(capsys, "convert")
    assert not (tmp_path / "out").exists()


def test_convert_names_an_empty_tokenizer_folder(reference_checkpoint, tmp_path, capsys):  # noqa: F811
    _, checkpoint, base = reference_checkpoint
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["convert", "--checkpoint", str(checkpoint), "--reasoner-config", str(base), "--output",
            str(tmp_path / "out"), "--tokenizer", str(empty)]  # fmt: skip
    assert main(argv) == 2
    line = _error(capsys, "convert")
    assert "holds no tokenizer files" in line and str(empty) in line
    assert "sentencepiece" not in line and "tiktoken" not in line


def test_a_wrong_shaped_weight_is_named(tiny_model_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    weights = load_file(str(model_dir / "model.safetensors"))
    name = next(k for k in weights if k.endswith("q_proj.weight"))
    weights[name] = torch.zeros(3, 3)
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError, match=rf"{name} \(3, 3\) vs") as error:
        FlyThinkerForCausalLM.from_pretrained(model_dir)
    assert "ignore_mismatched_sizes" not in str(error.value)


def test_generate_on_an_empty_prompt_says_what_is_wrong(tiny_model_dir):
    model = FlyThinkerForCausalLM.from_pretrained(tiny_model_dir).eval()
    with pytest.raises(ValueError, match="input_ids holds no token"):
        model.generate(input_ids=torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2)


def test_a_profile_of_ints_in_the_first_record_blames_the_field(tmp_path):
    from flythinker.train.readers import read_records

    data = tmp_path / "ints.jsonl"
    rows = [{"name": "u", "input": "x", "output": "y", "profile": [1, 2]},
            {"name": "u", "input": "x", "output": "y", "profile": [{"reviewText": "r"}]}]  # fmt: skip
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ValueError, match=r'line 1: field "profile" item 1 must be an object') as error:
        read_records(str(data))
    assert "detect the task" not in str(error.value)
