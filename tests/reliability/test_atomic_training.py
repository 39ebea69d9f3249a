"""Checkpoints and model/ appear only when complete; a killed `flythinker train` resumes exactly (issue 16)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from flythinker.train import checkpoints as checkpoints_module
from flythinker.train.finetune import FinetuneConfig, run_finetune
from tests.finetune_helpers import train_argv
from tests.reliability.conftest import kill_when, run_cli, start_cli


def _argv(workspace, run_dir, *extra):
    return train_argv(
        workspace, run_dir, *extra, max_target_tokens=32, max_steps=6, global_batch_size=2, per_device_batch_size=1,
        learning_rate="1e-3", warmup_ratio=0, save_steps=1, save_total_limit=2, seed=3,
    )  # fmt: skip


def _staged(run_dir):
    """A checkpoint is being written (its staging folder holds files). The trainer renames the folder
    into place at any moment, so it may vanish between the check and the listing: not staged then."""
    try:
        return any((run_dir / "checkpoints" / ".in-progress").iterdir())
    except FileNotFoundError:
        return False


def _has(run_dir, name):
    return lambda: (run_dir / "checkpoints" / name).is_dir()


def _final_save_started(run_dir):
    return lambda: any(run_dir.glob(".model.partial-*"))


@pytest.mark.slow
def test_kill_9_at_several_points_then_resume_last_equals_an_uninterrupted_run(workspace, tmp_path):
    straight = tmp_path / "straight"
    assert run_cli(_argv(workspace, straight)) == 0
    expected = load_file(str(straight / "model" / "model.safetensors"))

    run = tmp_path / "killed"
    triggers = [
        lambda: _staged(run),
        _has(run, "checkpoint-2"),
        lambda: _staged(run),
        _final_save_started(run),
    ]
    kills = 0
    for number, trigger in enumerate(triggers):
        extra = ("--resume-from-checkpoint", "last") if number else ()
        kills += kill_when(start_cli(_argv(workspace, run, *extra)), trigger)
        for checkpoint in (run / "checkpoints").glob("checkpoint-*"):  # whatever is visible is complete
            assert (checkpoint / checkpoints_module.COMPLETE_MARKER).is_file() and (
                checkpoint / "trainer_state.json"
            ).is_file()
        assert not (run / "model").exists() or (run / "train_metrics.json").exists()
    assert kills >= 3
    assert run_cli(_argv(workspace, run, "--resume-from-checkpoint", "last")) == 0
    resumed = load_file(str(run / "model" / "model.safetensors"))
    assert resumed.keys() == expected.keys()
    assert max((resumed[k] - expected[k]).abs().max().item() for k in expected) <= 1e-6
    metrics = json.loads((run / "train_metrics.json").read_text())
    assert metrics["global_step"] == 6
    assert len(list((run / "checkpoints").glob("checkpoint-*"))) == 2  # rotation kept the newest two
    assert not (run / "checkpoints" / ".in-progress").exists() and not list(run.glob(".model.partial-*"))


def test_last_skips_an_incomplete_checkpoint(tmp_path):
    import torch
    from safetensors.torch import save_file

    checkpoints = tmp_path / "checkpoints"
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = checkpoints / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            (folder / name).write_bytes(b"state")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        if complete:
            manifest = checkpoints_module.file_manifest(folder)
            (folder / checkpoints_module.COMPLETE_MARKER).write_text(json.dumps({"files": manifest}))
    (checkpoints / "checkpoint-6" / "trainer_state.json").write_text('{"global_st')  # torn by a kill
    assert checkpoints_module.last_complete_checkpoint(checkpoints) == checkpoints / "checkpoint-4"


def test_an_incomplete_checkpoint_is_refused_by_name(workspace, tmp_path):
    broken = tmp_path / "run" / "checkpoints" / "checkpoint-3"
    broken.mkdir(parents=True)
    config = FinetuneConfig(
        train_file=workspace["train"],
        output_dir=str(tmp_path / "run"),
        generator=str(workspace["root"] / "generator"),
        resume_from_checkpoint=str(broken),
    )
    with pytest.raises(ValueError, match="the checkpoint is incomplete"):
        run_finetune(config)


def test_final_model_is_published_by_rename(workspace, tmp_path, monkeypatch):
    """A failure while writing model/ leaves no model/ (and so no 'finished' run)."""
    from flythinker.modeling.modeling_flythinker import FlyThinkerForCausalLM

    original = FlyThinkerForCausalLM.save_pretrained

    def broken_save(self, directory, *args, **kwargs):  # the final save dies half-way through
        if "checkpoint" in str(directory):
            return original(self, directory, *args, **kwargs)
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(FlyThinkerForCausalLM, "save_pretrained", broken_save)
    root = workspace["root"]
    config = FinetuneConfig(
        train_file=workspace["train"],
        output_dir=str(tmp_path / "run"),
        generator=str(root / "generator"),
        reasoner=str(root / "reasoner"),
        max_length=256,
        max_target_tokens=32,
        max_steps=1,
        global_batch_size=1,
        save_steps=10,
    )
    with pytest.raises(OSError, match="disk full"):
        run_finetune(config)
    assert (
        not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "train_metrics.json").exists()
    )
