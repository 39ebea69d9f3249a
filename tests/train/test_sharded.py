"""Sharded training on CPU: DeepSpeed ZeRO-3 and FSDP2 (``fully_shard``), 2 gloo ranks, through
``accelerate launch`` with the repository's configs (``configs/accelerate/*_cpu.yaml``).

Each engine runs ``tests/train/sharded_worker.py`` twice (two AdamW steps with a sharded checkpoint
after step 1; then a fresh start resumed from that checkpoint), and is compared with one process that
takes the same two steps on the whole global batch (each rank holds half of it, with equal label
counts, so the mean of the ranks' mean losses is the global mean loss):

* loss of both steps and every full gradient of step 1 equal the single-process run (fp32; rtol
  ``RTOL_STEP``, atol ``ATOL_GRAD``);
* m̄ — what the forward used on every rank, and :func:`full_mean_embedding_norm` on the sharded
  parameter outside forward — equals the full-table value (rtol ``RTOL_MBAR``), while a shard-only
  computation would miss by far more (ZeRO-3: the forward really was handed 0-size placeholders,
  whose mean is NaN; FSDP2: the local shard's mean differs by > 100x the tolerance);
* the fused loss was always handed the full [V, d] LM-head weight;
* the consolidated checkpoint is a normal ``save_pretrained`` directory that reloads (no flythinker
  sharding code involved) with the sharded model's logits, and the resumed run reproduces the
  uninterrupted one (loss, consolidated weights, logits).
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flythinker import FlyThinkerConfig, FlyThinkerForCausalLM
from flythinker.kernels.injection import mean_embedding_norm
from flythinker.modeling.sharded_norm import _add_flat_row_squares, full_mean_embedding_norm
from tests.tiny_models import tiny_llama_config, tiny_qwen2_config
from tests.train import sharded_worker as worker

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {
    "zero3": "configs/accelerate/deepspeed_zero3_cpu.yaml",
    "fsdp2": "configs/accelerate/fsdp_cpu.yaml",
}
RTOL_STEP, ATOL_GRAD, RTOL_MBAR, ATOL_LOGITS = 1e-5, 1e-6, 1e-6, 1e-5


# ------------------------------------------------------------------------------ single process
def test_plain_tensor_is_the_reference_mean_norm():
    table = torch.randn(37, 11, dtype=torch.float64)
    torch.testing.assert_close(full_mean_embedding_norm(table), mean_embedding_norm(table), rtol=0, atol=0)
    torch.testing.assert_close(
        full_mean_embedding_norm(table.to(torch.bfloat16)), mean_embedding_norm(table.to(torch.bfloat16))
    )
    with pytest.raises(ValueError, match="placeholder"):
        full_mean_embedding_norm(torch.empty(0))


@pytest.mark.parametrize("ranks", [1, 2, 3, 5, 8, 13])
def test_flat_partitions_reassemble_every_row(ranks):
    """ZeRO-3's layout: rank r holds flat elements [r·P, (r+1)·P), the last partition zero-padded."""
    vocab, width = 19, 7
    table = torch.randn(vocab, width, dtype=torch.float64)
    flat = table.reshape(-1)
    size = math.ceil(flat.numel() / ranks)
    row_sq = torch.zeros(vocab, dtype=torch.float64)
    for rank in range(ranks):
        start = rank * size
        part = flat[start : start + size]
        if part.numel():
            _add_flat_row_squares(row_sq, part, start, width)
    torch.testing.assert_close(row_sq, table.square().sum(-1))
    torch.testing.assert_close(row_sq.sqrt().mean(), mean_embedding_norm(table))


# ------------------------------------------------------------------------------ 2 ranks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dtensor_rows_columns_and_replicas(tmp_path):
    """Uneven shards (19 rows, 7 columns over 2 ranks): every placement gives the full table's m̄."""
    table = torch.randn(19, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = tmp_path / "norms.pt"
    torch.multiprocessing.spawn(worker.dtensor_mean_norms, args=(2, _free_port(), table, str(out)), nprocs=2)
    want = float(mean_embedding_norm(table))
    for rank_values in torch.load(out):
        for name, value in rank_values.items():
            assert value == pytest.approx(want, rel=1e-12), name


def _launch(engine: str, init: Path, out: Path, phase: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", CONFIGS[engine],
           "--main_process_port", str(_free_port()), "tests/train/sharded_worker.py",
           "--init", str(init), "--out", str(out), "--phase", phase]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{engine} {phase} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return torch.load(out / phase / "result.pt", weights_only=False)


# ZeRO-3 gets an untied LM head (Qwen2.5-7B's layout: the fused loss reads a weight no module forward
# gathered), FSDP2 the tied one (SmolLM2's).
TIED = {"zero3": False, "fsdp2": True}
_INIT: dict = {}
_REFERENCE: dict = {}


def _init_dir(engine: str, tmp_path_factory) -> Path:
    if engine not in _INIT:
        path = tmp_path_factory.mktemp(f"init_{engine}") / "init"
        generator = tiny_qwen2_config(hidden=32, tie=TIED[engine])
        torch.manual_seed(0)
        config = FlyThinkerConfig(generator_config=generator, reasoner_config=tiny_llama_config(hidden=16))
        FlyThinkerForCausalLM(config).float().save_pretrained(path)
        _INIT[engine] = path
    return _INIT[engine]


def _reference(init_dir: Path) -> dict:
    """Two AdamW steps on the whole global batch in this process."""
    if init_dir in _REFERENCE:
        return _REFERENCE[init_dir]
    torch.manual_seed(0)
    model = FlyThinkerForCausalLM.from_pretrained(init_dir, dtype=torch.float32)
    model.train()
    optimizer = worker.make_optimizer(model.parameters())
    vocab = model.config.get_text_config().vocab_size
    ids = worker.global_batch(vocab)
    embedding = model.get_input_embeddings().weight
    out: dict = {"losses": {}, "mbar": {"before_step1": float(mean_embedding_norm(embedding))}}
    for step in (1, 2):
        loss = model(input_ids=ids, labels=ids).loss
        out["losses"][step] = float(loss.detach())
        loss.backward()
        if step == 1:
            out["grads"] = {
                n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None
            }
        optimizer.step()
        optimizer.zero_grad()
        out["mbar"][f"after_step{step}"] = float(mean_embedding_norm(embedding))
    model.eval()
    with torch.no_grad():
        out["probe_logits"] = model(input_ids=worker.probe_batch(vocab)).logits
    out["table_shape"] = tuple(embedding.shape)
    _REFERENCE[init_dir] = out
    return out


_RUNS: dict = {}


@pytest.fixture(params=["zero3", "fsdp2"])
def runs(request, tmp_path_factory) -> tuple[str, dict, dict, Path]:
    engine = request.param
    if engine == "zero3":
        pytest.importorskip("deepspeed")
    if engine not in _RUNS:
        init = _init_dir(engine, tmp_path_factory)
        out = tmp_path_factory.mktemp(engine)
        train = _launch(engine, init, out, "train")
        resume = _launch(engine, init, out, "resume")
        _RUNS[engine] = (engine, train, resume, out)
    return _RUNS[engine]


@pytest.fixture
def reference(runs, tmp_path_factory) -> dict:
    return _reference(_init_dir(runs[0], tmp_path_factory))


@pytest.mark.slow
def test_step_matches_single_process(runs, reference):
    engine, train, _, _ = runs
    assert train["engine"] == engine and train["world"] == 2
    for step in (1, 2):
        assert train["losses"][step] == pytest.approx(reference["losses"][step], rel=RTOL_STEP), step
    assert set(train["grads"]) == set(reference["grads"])
    for name, grad in reference["grads"].items():
        torch.testing.assert_close(train["grads"][name], grad, rtol=1e-4, atol=ATOL_GRAD, msg=name)


@pytest.mark.slow
def test_mean_norm_is_the_full_tables_on_every_rank(runs, reference):
    engine, train, _, _ = runs
    full = reference["mbar"]
    for step, used in train["mbar_used"].items():  # the m̄ each rank's forward used
        want = full["before_step1"] if step == 1 else full[f"after_step{step - 1}"]
        assert used == pytest.approx([want] * 2, rel=RTOL_MBAR), (step, used, want)
    for key, values in train["mbar_outside"].items():  # full_mean_embedding_norm on the sharded parameter
        assert values == pytest.approx([full[key]] * 2, rel=RTOL_MBAR), (key, values)
    for key, values in train["mbar_refresh"].items():  # model.refresh_mean_embedding_norm() outside forward
        assert values == pytest.approx([full[key]] * 2, rel=RTOL_MBAR), (key, values)
    numel = math.prod(reference["table_shape"])
    shard_only = train["mbar_shard_only"]["before_step1"]
    assert train["tied"] == TIED[engine]
    if engine == "zero3":
        # Outside forward the parameter is a 0-size placeholder: a local computation gives NaN.
        assert train["weight_kind"] == "zero3" and train["local_numel"] == 0
        for key, values in train["mbar_gather_fallback"].items():  # the GatheredParameters path
            assert values == pytest.approx([full[key]] * 2, rel=RTOL_MBAR), (key, values)
        assert all(math.isnan(v) for v in shard_only)
    else:
        assert train["weight_kind"] == "dtensor" and 0 < train["local_numel"] < numel
        for value in shard_only:  # a shard's mean misses by far more than the tolerance
            assert abs(value - full["before_step1"]) > 100 * RTOL_MBAR * full["before_step1"], value


@pytest.mark.slow
def test_fused_loss_gets_the_full_lm_head_weight(runs, reference):
    _, train, _, _ = runs
    shapes = set(train["seen"]["loss_weight_shape"])
    assert shapes == {reference["table_shape"]}, shapes


@pytest.mark.slow
def test_consolidated_checkpoint_reloads_with_equal_logits(runs, reference):
    _, train, _, out = runs
    model = FlyThinkerForCausalLM.from_pretrained(out / "train" / "model", dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=worker.probe_batch(model.config.get_text_config().vocab_size)).logits
    torch.testing.assert_close(logits, train["probe_logits"], rtol=0, atol=ATOL_LOGITS)
    torch.testing.assert_close(logits, reference["probe_logits"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(runs):
    _, train, resume, out = runs
    assert resume["losses"][2] == pytest.approx(train["losses"][2], rel=1e-6)
    torch.testing.assert_close(resume["probe_logits"], train["probe_logits"], rtol=0, atol=ATOL_LOGITS)
    from safetensors.torch import load_file

    a = load_file(out / "train" / "model" / "model.safetensors")
    b = load_file(out / "resume" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
