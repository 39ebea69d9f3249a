"""A diverging run stops at the first non-finite loss / gradient norm / weight and saves nothing non-finite."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from flythinker.cli import main
from flythinker.train import finetune
from flythinker.train.finetune import run_finetune
from tests.finetune_helpers import train_argv, workspace_config


def _config(workspace, output_dir, **overrides):
    options = dict(max_target_tokens=32, max_steps=6, global_batch_size=2, save_steps=1, seed=7)
    return workspace_config(workspace, output_dir, **{**options, **overrides})


class PoisonAfter(TrainerCallback):
    """Writes NaN into one generator weight after optimizer step ``step`` (a diverging update)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                model.generator.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")


def _all_finite(directory):
    return all(torch.isfinite(t).all() for t in load_file(str(directory / "model.safetensors")).values())


@pytest.mark.parametrize(
    ("poison_step", "message", "kept"),
    [
        (3, r"optimizer step 4: the loss is nan.*last good checkpoint is .*checkpoint-2", ["checkpoint-2"]),
        (
            2,
            r"optimizer step 2: weight generator\.model\.layers\.0\.mlp\.up_proj\.weight holds NaN.*no checkpoint",
            [],
        ),
    ],
)
def test_a_nan_weight_stops_the_run_and_keeps_the_last_good_checkpoint(
    workspace, tmp_path, poison_step, message, kept
):
    run = tmp_path / "run"
    with pytest.raises(finetune.TrainingDivergedError, match=message):
        run_finetune(_config(workspace, run, save_steps=2), callbacks=[PoisonAfter(poison_step)])
    checkpoints = sorted((run / "checkpoints").glob("checkpoint-*"))
    assert [c.name for c in checkpoints] == kept and all(_all_finite(c) for c in checkpoints)
    assert not (run / "model").exists() and not (run / "train_metrics.json").exists()


@pytest.mark.parametrize("learning_rate", ["1e4", "1e30"])
def test_cli_learning_rate_far_too_high_exits_non_zero_naming_the_step(
    workspace, tmp_path, capsys, learning_rate
):
    run = tmp_path / "run"
    code = main(
        train_argv(workspace, run, max_target_tokens=32, max_steps=6, global_batch_size=2, per_device_batch_size=1,
                   learning_rate=learning_rate, warmup_ratio=0, save_steps=1)
    )  # fmt: skip
    lines = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("flythinker train: error:")
    ]
    assert code != 0
    assert len(lines) == 1 and "training diverged at optimizer step" in lines[0] and "--debug" in lines[0]
    assert not (run / "model").exists()
    for checkpoint in (run / "checkpoints").glob("checkpoint-*"):
        assert _all_finite(checkpoint)  # never saved a non-finite weight


def test_generate_refuses_a_model_with_non_finite_weights(tiny_model_dir, workspace, tmp_path, capsys):
    from flythinker import FlyThinkerForCausalLM

    model = FlyThinkerForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.reasoner.layers[0].mlp.up_proj.weight.fill_(float("nan"))
    model.save_pretrained(tmp_path / "nan_model")
    workspace["tokenizer"].save_pretrained(tmp_path / "nan_model")
    code = main(
        [
            "generate",
            "--model",
            str(tmp_path / "nan_model"),
            "--data",
            workspace["train"],
            "--run-dir",
            str(tmp_path / "gen"),
            "--max-length",
            "256",
            "--max-target-tokens",
            "32",
        ]
    )
    assert code == 2
    assert "holds NaN/inf" in capsys.readouterr().err
    assert not (tmp_path / "gen" / "predictions.jsonl").exists()
