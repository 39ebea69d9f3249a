"""A run that exits 0 describes what happened (issue 23): one run per directory (a lock), resume checks
options and data against the stored run, checkpoints count only when every file the resume reads is intact,
``--method sft`` and a continued FlyThinker refuse options they would not use."""

from __future__ import annotations

import errno
import json
import logging
import shutil

import pytest

from flythinker.cli import main
from flythinker.train.finetune import FinetuneConfig, run_finetune
from tests.finetune_helpers import train_argv, workspace_config


def _argv(workspace, run, *extra, **options):
    values = {"max_target_tokens": 32, "max_steps": 2, "global_batch_size": 1, "save_steps": 1, **options}
    return train_argv(workspace, run, *extra, **values)


def _without_reasoner(argv):
    at = argv.index("--reasoner")
    return argv[:at] + argv[at + 2 :]


def _error(capsys, command="train"):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if f"flythinker {command}: error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def _snapshot(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(workspace, tmp_path_factory):
    """A finished two-step run with checkpoint-1 and checkpoint-2, over a private copy of the data."""
    root = tmp_path_factory.mktemp("finished")
    data = root / "train.jsonl"
    shutil.copy(workspace["train"], data)
    run = root / "run"
    assert main(_argv(workspace, run, train_file=data)) == 0
    return {"run": run, "data": data}


def _copy(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished["run"], run)
    data = tmp_path / "train.jsonl"
    shutil.copy(finished["data"], data)
    stored = json.loads((run / "finetune_config.json").read_text())
    stored["output_dir"], stored["train_file"] = str(run), str(data)
    (run / "finetune_config.json").write_text(json.dumps(stored, indent=2))
    (run / "provenance.json").write_text(
        json.dumps({**json.loads((run / "provenance.json").read_text()), "train_file": str(data)})
    )
    return run, data


# ---------------------------------------------------------------------------------------------- 1. lock
def test_a_second_run_into_a_directory_in_use_is_refused(workspace, tmp_path, capsys):
    from flythinker.train.run_lock import RunLock

    run = tmp_path / "run"
    with RunLock(run):  # a run is writing it (flock conflicts even between two opens in one process)
        assert main(_argv(workspace, run)) != 0
        line = _error(capsys)
    assert "another run" in line and str(run) in line and f"pid {__import__('os').getpid()}" in line
    assert not (run / "model").exists() and not (run / "finetune_config.json").exists()


def test_a_stale_lock_of_a_dead_process_is_named_and_taken_over(tmp_path, caplog):
    from flythinker.train.run_lock import LOCK_NAME, RunLock

    tmp_path.joinpath(LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "h", "started": "t"}))
    with caplog.at_level(logging.WARNING), RunLock(tmp_path):
        pass
    assert "stale lock" in caplog.text and "pid 999999" in caplog.text
    assert not tmp_path.joinpath(LOCK_NAME).exists()  # released


# ------------------------------------------------------------------------------------- 3. resume checks
@pytest.mark.parametrize(
    ("change", "named"),
    [
        (("--fusion-lambda", "0.3"), "--fusion-lambda"),
        (("--recipe", "gate_scalar"), "--recipe"),
        (("--learning-rate", "0.01"), "--learning-rate"),
        ("data", "--train-file content"),
    ],
)
def test_resume_refuses_other_options_or_data_and_writes_nothing(
    workspace, finished, tmp_path, capsys, change, named
):
    run, data = _copy(finished, tmp_path)
    extra = ()
    if change == "data":
        data.write_text(data.read_text().replace("a", "b", 1))
    else:
        extra = change
    before = _snapshot(run)
    argv = _argv(workspace, run, *extra, "--resume-from-checkpoint", "last", train_file=data)
    assert main(argv) == 2
    line = _error(capsys)
    assert named in line and "finetune_config.json" in line
    assert _snapshot(run) == before


def test_resume_with_the_stored_options_continues(workspace, finished, tmp_path):
    run, data = _copy(finished, tmp_path)
    shutil.rmtree(run / "checkpoints" / "checkpoint-2")
    assert main(_argv(workspace, run, "--resume-from-checkpoint", "last", train_file=data)) == 0
    assert json.loads((run / "train_metrics.json").read_text())["global_step"] == 2


# ------------------------------------------------------------------------ 4./5. complete and intact checkpoints
@pytest.mark.parametrize("missing", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_a_checkpoint_without_resume_state_is_not_complete(finished, tmp_path, missing):
    from flythinker.train.checkpoints import checkpoint_problem, last_complete_checkpoint

    run, _ = _copy(finished, tmp_path)
    assert checkpoint_problem(run / "checkpoints" / "checkpoint-2") is None
    (run / "checkpoints" / "checkpoint-2" / missing).unlink()
    assert missing in checkpoint_problem(run / "checkpoints" / "checkpoint-2")
    assert last_complete_checkpoint(run / "checkpoints") == run / "checkpoints" / "checkpoint-1"


@pytest.mark.parametrize("damage", ["model.safetensors", "trainer_state.json", "optimizer.pt"])
def test_last_skips_a_damaged_newest_checkpoint_with_a_warning_naming_it(
    workspace, finished, tmp_path, caplog, damage
):
    run, data = _copy(finished, tmp_path)
    target = run / "checkpoints" / "checkpoint-2" / damage
    if damage == "optimizer.pt":
        target.write_bytes(target.read_bytes()[:-10])  # truncated
    else:
        raw = bytearray(target.read_bytes())
        raw[8:12] = b"\xff\xfe\x00{" if damage == "model.safetensors" else b"\x00\x00\x00\x00"
        target.write_bytes(bytes(raw))  # same size, unreadable
    explicit = workspace_config(workspace, tmp_path / "other", resume_from_checkpoint=str(target.parent))
    with pytest.raises(ValueError, match=str(target)):  # an explicit checkpoint: refused, naming the file
        explicit.validate()
    stored = json.loads((run / "finetune_config.json").read_text())
    config = FinetuneConfig(**{**stored, "resume_from_checkpoint": "last"})  # the stored run, continued
    with caplog.at_level(logging.WARNING):
        metrics = run_finetune(config)
    assert metrics["global_step"] == 2
    assert "skipping" in caplog.text and str(target) in caplog.text


def test_a_full_disk_names_the_path_being_written(workspace, tmp_path, monkeypatch):
    import torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    config = workspace_config(workspace, tmp_path / "run", max_target_tokens=32, max_steps=1, global_batch_size=1,
                              save_steps=1)  # fmt: skip
    with pytest.raises(OSError, match=r"\.in-progress: cannot write a checkpoint: No space left on device"):
        run_finetune(config)


# ------------------------------------------------------------------------------ 6. --method sft
@pytest.mark.parametrize(
    "extra",
    [
        ("--fusion-gate", "scalar"),
        ("--fusion-lambda", "0.3"),
        ("--recipe", "center"),
        ("--projection", "linear"),
    ],
)
def test_sft_refuses_flythinker_options(workspace, tmp_path, capsys, extra):
    run = tmp_path / "run"
    assert main(_without_reasoner(_argv(workspace, run, "--method", "sft", *extra))) == 2
    line = _error(capsys)
    assert extra[0] in line and "--method sft" in line
    assert not run.exists()


def test_sft_records_no_flythinker_options(workspace, tmp_path):
    run = tmp_path / "run"
    assert main(_without_reasoner(_argv(workspace, run, "--method", "sft"))) == 0
    recorded = json.loads((run / "finetune_config.json").read_text())
    assert recorded["method"] == "sft"
    for name in ("fusion_lambda", "fusion_gate", "projection", "warm_start_lr_multiplier", "reasoner"):
        assert recorded[name] is None, name


def test_sft_refuses_a_reasoner(workspace, tmp_path, capsys):
    assert main(_argv(workspace, tmp_path / "run", "--method", "sft")) == 2
    assert "--reasoner" in _error(capsys)


# ---------------------------------------------------------------------- 2. continuing a saved FlyThinker
@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (("--fusion-gate", "scalar"), "--fusion-gate"),
        (("--projection", "linear"), "--projection"),
        (("--fusion-lambda", "0.3"), "--fusion-lambda"),
        (("--recipe", "gate_scalar"), "--recipe gate_scalar"),
    ],
)
def test_continuing_a_saved_flythinker_refuses_options_it_cannot_apply(
    workspace, tiny_model_dir, tmp_path, capsys, extra, named
):
    run = tmp_path / "run"
    argv = _without_reasoner(_argv(workspace, run, *extra, generator=tiny_model_dir))
    assert main(argv) == 2
    line = _error(capsys)
    assert named in line and "saved FlyThinker" in line
    assert not run.exists()


def test_continuing_a_saved_flythinker_refuses_a_reasoner(workspace, tiny_model_dir, tmp_path, capsys):
    assert main(_argv(workspace, tmp_path / "run", generator=tiny_model_dir)) == 2
    assert "--reasoner" in _error(capsys)


def test_continuing_a_saved_flythinker_records_what_ran(workspace, tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    assert main(_without_reasoner(_argv(workspace, run, generator=tiny_model_dir))) == 0
    recorded = json.loads((run / "finetune_config.json").read_text())
    saved = json.loads((tiny_model_dir / "config.json").read_text())
    for name in ("fusion_lambda", "projection", "fusion_gate", "center_reasoner", "norm_eps"):
        assert recorded[name] == saved[name], name
    assert recorded["warm_start_lr_multiplier"] == 1.0  # no gate and no zero_linear W to boost
    model = json.loads((run / "model" / "config.json").read_text())
    assert (model["projection"], model["fusion_gate"]) == (saved["projection"], saved["fusion_gate"])


def test_finetune_config_default_records_the_recipe_values(workspace, tmp_path):
    config = FinetuneConfig(train_file=workspace["train"], output_dir=str(tmp_path / "r"),
                            generator=str(workspace["root"] / "generator"))  # fmt: skip
    config.validate()
    assert (config.fusion_lambda, config.norm_eps, config.projection) == (0.5, 0.0, "zero_linear")


# ------------------------------------------------------------------------------------------ 9. real tokens
def test_real_tokens_count_each_label_token_once(workspace, tmp_path):
    """One epoch, one example per step: real_tokens is the number of label tokens of the data (the
    prompt is context, not trained on), and the rate is that over the training time."""
    from flythinker.train.finetune import load_tokenizer, prepare_dataset

    config = workspace_config(workspace, tmp_path / "run", max_target_tokens=32, global_batch_size=1,
                              num_train_epochs=1.0, save_steps=100)  # fmt: skip
    config.validate()
    dataset = prepare_dataset(config, load_tokenizer(config.generator))
    expected = sum(sum(1 for label in row["labels"] if label != -100) for row in dataset)
    metrics = run_finetune(config)
    assert metrics["global_step"] == len(dataset)
    assert metrics["real_tokens"] == expected
    assert metrics["real_tokens_per_second"] == pytest.approx(expected / metrics["train_runtime"], rel=0.01)
