"""Fine-tuning: resume, LoRA merge, SFT baseline, packing ≡ padding, and 2-process DDP via accelerate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from flythinker import FlyThinkerForCausalLM
from flythinker.train.collators import PackingCollator, PaddingCollator
from flythinker.train.finetune import run_finetune
from flythinker.train.prompts import PromptBuilder, encode_records
from flythinker.train.readers import read_records
from tests.finetune_helpers import workspace_config

REPO = Path(__file__).resolve().parents[2]


def _config(workspace, output_dir, **overrides):
    options = dict(
        max_target_tokens=64, max_steps=4, global_batch_size=2, save_steps=2, seed=7, logging_steps=1
    )
    return workspace_config(workspace, output_dir, **{**options, **overrides})


class StopAfter(TrainerCallback):
    """Simulates an interruption: stop training (after the step's checkpoint) at a given step."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def _weights(directory):
    model = FlyThinkerForCausalLM.from_pretrained(directory)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_continues_with_the_same_optimizer_scheduler_and_step(workspace, tmp_path):
    straight = run_finetune(_config(workspace, tmp_path / "straight"))
    assert straight["global_step"] == 4
    run_finetune(_config(workspace, tmp_path / "interrupted"), callbacks=[StopAfter(2)])
    checkpoint = tmp_path / "interrupted" / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "optimizer.pt").exists() and (checkpoint / "scheduler.pt").exists()
    resumed = run_finetune(
        _config(workspace, tmp_path / "interrupted", resume_from_checkpoint=str(checkpoint))
    )
    assert resumed["global_step"] == 4
    a, b = _weights(tmp_path / "straight" / "model"), _weights(tmp_path / "interrupted" / "model")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    history = json.loads((tmp_path / "interrupted" / "log_history.json").read_text())
    straight_history = json.loads((tmp_path / "straight" / "log_history.json").read_text())
    lr = [e["learning_rate"] for e in history if "learning_rate" in e]
    assert lr[-1] == pytest.approx([e["learning_rate"] for e in straight_history if "learning_rate" in e][-1])
    initial = FlyThinkerForCausalLM.from_components(
        generator=str(workspace["root"] / "generator"), reasoner=str(workspace["root"] / "reasoner")
    ).state_dict()
    # training did move the weights (the recipe's gate α is new: compare the base models' weights)
    assert max((a[k] - initial[k]).abs().max().item() for k in initial) > 1e-4


def test_lora_reasoner_is_merged_into_a_plain_checkpoint(workspace, tmp_path):
    metrics = run_finetune(
        _config(workspace, tmp_path / "lora", reasoner_mode="lora", lora_rank=4, max_steps=2)
    )
    full = run_finetune(_config(workspace, tmp_path / "full", reasoner_mode="full", max_steps=1))
    assert metrics["trainable_parameters"] < full["trainable_parameters"]
    weights = _weights(tmp_path / "lora" / "model")
    assert not any("lora" in key for key in weights)
    assert any(key.startswith("reasoner.") for key in weights)


def test_frozen_reasoner_keeps_its_weights(workspace, tmp_path):
    run_finetune(_config(workspace, tmp_path / "frozen", reasoner_mode="freeze", max_steps=2))
    trained = _weights(tmp_path / "frozen" / "model")
    base = AutoModelForCausalLM.from_pretrained(workspace["root"] / "reasoner").model.state_dict()
    assert all(torch.equal(trained[f"reasoner.{k}"], v) for k, v in base.items())


def test_sft_baseline_saves_a_plain_generator(workspace, tmp_path):
    metrics = run_finetune(_config(workspace, tmp_path / "sft", method="sft", reasoner=None, max_steps=2))
    assert metrics["global_step"] == 2
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sft" / "model")
    assert not isinstance(model, FlyThinkerForCausalLM)
    assert model.config.model_type == "qwen2"


def test_packed_batch_gives_the_unpacked_loss(workspace):
    tokenizer = workspace["tokenizer"]
    model = FlyThinkerForCausalLM.from_components(
        generator=str(workspace["root"] / "generator"),
        reasoner=str(workspace["root"] / "reasoner"),
        dtype=torch.float64,
    ).eval()
    builder = PromptBuilder(tokenizer, max_length=256, max_target_tokens=64)
    features = encode_records(read_records(workspace["train"])[:3], builder, progress=False)
    padded = PaddingCollator(tokenizer.pad_token_id)(features)
    packed = PackingCollator(1024, tokenizer.pad_token_id)(features)
    assert packed["input_ids"].shape[0] == 1
    with torch.no_grad():
        loss_padded = model(**padded).loss
        loss_packed = model(**packed).loss
    assert (loss_padded - loss_packed).abs().item() <= 1e-10


@pytest.mark.slow
def test_two_process_ddp_step_through_accelerate_launch(workspace, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "configs/accelerate/ddp_cpu.yaml"),
        "-m",
        "flythinker.cli",
        "train",
        "--train-file",
        workspace["train"],
        "--output-dir",
        str(tmp_path / "ddp"),
        "--generator",
        str(workspace["root"] / "generator"),
        "--reasoner",
        str(workspace["root"] / "reasoner"),
        "--max-length",
        "256",
        "--max-target-tokens",
        "64",
        "--max-steps",
        "1",
        "--global-batch-size",
        "2",
        "--per-device-batch-size",
        "1",
        "--save-steps",
        "1",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "train_metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_step"] == 1
    assert (tmp_path / "ddp" / "model" / "model.safetensors").exists()
