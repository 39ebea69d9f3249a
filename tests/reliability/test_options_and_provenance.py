"""Every numeric option is range-checked, and a failed rerun never rewrites an existing run (issue 16)."""

from __future__ import annotations

import json

import pytest

from flythinker.cli import main
from flythinker.train.finetune import FinetuneConfig
from tests.finetune_helpers import train_argv


def _train_argv(workspace, run, *extra):
    return train_argv(
        workspace, run, *extra, max_target_tokens=32, max_steps=1, global_batch_size=1, save_steps=5
    )


def _error(capsys, command):
    lines = [line for line in capsys.readouterr().err.splitlines() if f"flythinker {command}: error:" in line]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        (("--learning-rate", "nan"), "--learning-rate"),
        (("--learning-rate", "-1"), "--learning-rate"),
        (("--fusion-lambda", "inf"), "--fusion-lambda"),
        (("--max-records", "-1"), "--max-records"),
        (("--max-records", "0"), "--max-records"),
        (("--warmup-ratio", "2"), "--warmup-ratio"),
        (("--max-grad-norm", "nan"), "--max-grad-norm"),
        (("--save-steps", "0"), "--save-steps"),
        (("--projection", "diagonal"), "--projection"),
        (("--max-steps", "0"), "--max-steps"),
    ],
)
def test_train_rejects_out_of_range_options_before_writing(workspace, tmp_path, capsys, extra, names):
    run = tmp_path / "run"
    assert main(_train_argv(workspace, run, *extra)) == 2
    line = _error(capsys, "train")
    assert names in line and extra[1] in line  # names the option and the value
    assert not run.exists()  # nothing written


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--max-records", "-1"),
        ("--max-records", "0"),
        ("--batch-size", "0"),
        ("--max-new-tokens", "0"),
        ("--temperature", "nan"),
        ("--top-p", "inf"),
        ("--repetition-penalty", "nan"),
    ],
)
def test_generate_rejects_out_of_range_options(tiny_model_dir, workspace, tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "generate",
                "--model",
                str(tiny_model_dir),
                "--data",
                workspace["train"],
                "--run-dir",
                str(tmp_path / "gen"),
                option,
                value,
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert option in err and value in err
    assert not (tmp_path / "gen").exists()


def test_convert_rejects_a_non_finite_lambda(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "convert",
                "--checkpoint",
                str(tmp_path),
                "--output",
                str(tmp_path / "out"),
                "--fusion-lambda",
                "nan",
            ]
        )
    assert "--fusion-lambda" in capsys.readouterr().err


def test_train_exposes_the_projection_the_width_error_asks_for(workspace, tmp_path, capsys):
    """A reasoner wider than the generator cannot be zero-padded (the paper's recipe): the error names
    --projection, and `flythinker train` can set it (the default recipe's zero_linear fits any width)."""
    root = workspace["root"]
    wide = [*_train_argv(workspace, tmp_path / "zero_pad"), "--recipe", "paper"]  # the paper's zero-padding
    wide[wide.index("--reasoner") + 1] = str(root / "generator")  # d_R = 32
    wide[wide.index("--generator") + 1] = str(root / "reasoner_as_generator")
    from transformers import AutoModelForCausalLM

    from tests.tiny_models import tiny_llama_config

    narrow = AutoModelForCausalLM.from_config(
        tiny_llama_config(hidden=16, vocab=len(workspace["tokenizer"]) + 4)
    )
    narrow.save_pretrained(root / "reasoner_as_generator")
    workspace["tokenizer"].save_pretrained(root / "reasoner_as_generator")
    assert main(wide) == 2
    line = _error(capsys, "train")
    assert "projection" in line and "--projection" in line
    assert not (tmp_path / "zero_pad").exists()
    linear = [*wide, "--projection", "linear"]
    linear[linear.index("--output-dir") + 1] = str(tmp_path / "linear")
    assert main(linear) == 0
    config = json.loads((tmp_path / "linear" / "model" / "config.json").read_text())
    assert config["projection"] == "linear"


def test_model_option_fields_pass_through_to_the_config(workspace, tmp_path):
    from flythinker.train.finetune import MODEL_OPTION_FIELDS

    config = FinetuneConfig(
        train_file=workspace["train"], output_dir=str(tmp_path), generator="g", norm_eps=1e-6
    )
    assert set(MODEL_OPTION_FIELDS) <= set(config.model_options())
    assert config.model_options()["norm_eps"] == 1e-6


def test_a_failed_rerun_never_rewrites_a_finished_run(workspace, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_argv(workspace, run)) == 0
    before = {
        name: (run / name).read_bytes()
        for name in ("options.json", "finetune_config.json", "train_metrics.json")
    }
    model_before = (run / "model" / "model.safetensors").read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"name": "u", "input": "x", "output": "y", "profile": 3}\n')
    rerun = _train_argv(workspace, run)
    rerun[rerun.index("--train-file") + 1] = str(bad)
    assert main(rerun) == 2  # refused: the directory holds a finished run
    line = _error(capsys, "train")
    assert "already holds a finished run" in line and "--overwrite" in line
    assert main([*rerun, "--overwrite"]) == 2  # allowed to replace it, but the data is bad: fails first
    assert 'field "profile"' in _error(capsys, "train")
    for name, content in before.items():
        assert (run / name).read_bytes() == content, name
    assert (run / "model" / "model.safetensors").read_bytes() == model_before
