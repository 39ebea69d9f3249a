"""The quality harness (bench/bench_quality.py, bench/quality/) on tiny random models: it trains through
``flythinker train``'s own code (same per-step losses as the CLI), its controls replace exactly what they
say, its statistics match hand computations, and the selection rule is applied as written."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import bench_quality as bq  # noqa: E402
from quality import models  # noqa: E402
from quality.arms import ARMS  # noqa: E402
from quality.controls import ConstantState, Donor, OwnEmbedding, donor_pool  # noqa: E402
from quality.measure import MeasureCallback, record_nll  # noqa: E402
from quality.report import select_default  # noqa: E402
from quality.runner import RunSpec, finetune_config, run_arm  # noqa: E402
from quality.stats import paired_nll, paired_scores, two_way_bootstrap  # noqa: E402

from flythinker.cli import main as cli_main  # noqa: E402
from flythinker.modeling.modeling_flythinker import FlyThinkerForCausalLM  # noqa: E402

TINY = ["--tiny", "--reasoner-layers", "1", "--max-length", "224", "--max-target-tokens", "24"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    options = bq.parse_args([*TINY, "--val-records", "3", "--gen-requests", "2", "--max-new-tokens", "3"])
    return models.prepare(options, None, tmp_path_factory.mktemp("quality"))


def _spec(setup, work: Path, steps: int = 3) -> RunSpec:
    return RunSpec(
        train_file=str(setup.train_file), generator=str(setup.generator), reasoner=str(setup.reasoner),
        work_dir=str(work), steps=steps, batch_size=2, max_length=224, max_target_tokens=24,
    )  # fmt: skip


def _view(setup, arm: str = "sft"):
    overrides = ARMS[arm].overrides
    return setup.view(overrides.get("reasoner_context", False), overrides.get("profile_tokens"))


def _measure(setup, every: int = 3, generate: bool = False, arm: str = "sft") -> MeasureCallback:
    view = _view(setup, arm)
    return MeasureCallback(view, every=every, tokenizer=setup.tokenizer, generate=generate, max_new_tokens=3)


@pytest.mark.parametrize("arm", ["sft", "lora_gated", "ctx", "sft_noprofile"])
def test_harness_and_cli_give_the_same_per_step_losses(setup, tmp_path, arm):
    measure = _measure(setup, arm=arm)
    record = run_arm(
        ARMS[arm], _spec(setup, tmp_path / "harness"), seed=3, learning_rate=1e-3, measure=measure
    )
    argv = shlex.split(record["cli"])[1:]
    cli_dir = tmp_path / "cli"
    argv[argv.index("--output-dir") + 1] = str(cli_dir)
    assert cli_main(argv) == 0
    history = json.loads((cli_dir / "log_history.json").read_text())
    cli_losses = [h["loss"] for h in history if "loss" in h]
    assert len(record["train_loss"]) == 3
    assert cli_losses == record["train_loss"]
    assert record["step0_max_abs_logit_diff"] == 0.0  # every arm starts as the base generator exactly


def test_measurements_are_taken_every_k_steps_and_at_the_end(setup, tmp_path):
    record = run_arm(
        ARMS["zero_linear"],
        _spec(setup, tmp_path, steps=4),
        0,
        1e-3,
        _measure(setup, every=2, generate=True),
    )
    steps = [(e["step"], e["set"]) for e in record["evals"]]
    assert steps == [(2, "user_val"), (4, "user_val"), (4, "temporal_val")]
    assert len(record["evals"][0]["records"]) == len(_view(setup).val)
    assert len(record["generation"]["predictions"]) == len(_view(setup).requests)
    assert set(record["generation"]) == {"predictions", "rougeL", "meteor"}
    assert record["injection"]["tanh_gate"] is None  # zero_linear has no gate
    assert record["injection"]["projection_frobenius"] > 0  # W started at 0 and was trained


@pytest.mark.parametrize("context", [False, True])
def test_record_nll_matches_log_softmax_by_hand(setup, context):
    model = FlyThinkerForCausalLM.from_components(
        generator=str(setup.generator),
        reasoner=str(setup.reasoner),
        projection="zero_linear",
        reasoner_context=context,
    ).eval()
    with torch.no_grad():
        model.fusion.projection.weight.normal_(0, 0.1)  # an open injection: the reasoner's inputs matter
    view = setup.view(context, 0 if context else None)
    got = record_nll(model, view.val, view.collate, batch_size=2)
    for example, (nll, tokens) in zip(view.val, got):
        ids = torch.tensor([example["input_ids"]])
        labels = torch.tensor(example["labels"])
        extra = {"reasoner_input_ids": torch.tensor([example["reasoner_input_ids"]])} if context else {}
        logits = model(input_ids=ids, **extra).logits[0].double()
        positions = [t for t in range(1, len(labels)) if labels[t] != -100]
        expected = -sum(float(torch.log_softmax(logits[t - 1], -1)[labels[t]]) for t in positions)
        assert tokens == len(positions)
        assert nll == pytest.approx(expected, rel=1e-5, abs=1e-4)  # float32: a padded batch vs the row alone


def _fly(setup):
    torch.manual_seed(0)
    return FlyThinkerForCausalLM.from_components(
        generator=str(setup.generator), reasoner=str(setup.reasoner), projection="zero_linear"
    ).eval()


def _reasoner_inputs(model):
    seen = []
    model.reasoner.register_forward_pre_hook(
        lambda m, a, k: seen.append(k["input_ids"].clone()), with_kwargs=True
    )
    return seen


def test_donor_reads_other_training_text_at_real_positions_and_keeps_pads(setup):
    model = _fly(setup)
    pool = donor_pool(_view(setup).train)
    donor = Donor(pool, window=64)
    donor.install(model)
    seen = _reasoner_inputs(model)  # registered after the donor: sees what the reasoner reads
    ids = torch.tensor([[7, 8, 9, 10, 0, 0], [5, 6, 7, 8, 9, 11]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    model(input_ids=ids, attention_mask=mask)
    read = seen[-1]
    for row in range(2):
        n = int(mask[row].sum())
        start = donor.offset(ids[row][:n])
        assert torch.equal(read[row, :n], pool[start : start + n])  # a window of the training text
        assert torch.equal(read[row, n:], ids[row, n:])  # pads keep their ids
    model(input_ids=ids, attention_mask=mask)
    assert torch.equal(seen[-1], read)  # deterministic per sequence


def test_donor_continues_its_stream_during_incremental_decoding(setup):
    model = _fly(setup)
    pool = donor_pool(_view(setup).train)
    donor = Donor(pool, window=64)
    donor.install(model)
    seen = _reasoner_inputs(model)
    prompt = torch.tensor([[0, 0, 7, 8, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    model.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
    start = donor.offset(torch.tensor([7, 8, 9]))
    prefill, *steps = seen
    assert torch.equal(prefill[0, 2:], pool[start : start + 3])
    assert [int(s[0, -1]) for s in steps] == pool[start + 3 : start + 3 + len(steps)].tolist()


def test_const_and_own_embedding_replace_the_reasoner_states(setup):
    model = _fly(setup)
    model.reasoner.requires_grad_(False)
    mean = torch.randn(model.config.reasoner_hidden_size)
    ids = torch.tensor([[7, 8, 9, 10]])
    captured = {}
    model.fusion.register_forward_hook(lambda m, a, out: captured.setdefault("states", a[1]))
    handle = ConstantState(mean).install(model)
    model(input_ids=ids)
    assert torch.equal(captured.pop("states")[0], mean.expand(4, -1))
    handle.remove()
    OwnEmbedding().install(model)
    model(input_ids=ids)
    assert torch.equal(captured["states"][0], model.generator.get_input_embeddings()(ids)[0])


def test_const_refuses_a_trained_reasoner(setup):
    with pytest.raises(ValueError, match="frozen"):
        ConstantState(torch.zeros(4)).install(_fly(setup))


def test_two_way_bootstrap_against_hand_computation():
    diff = np.array([[1.0, -1.0, 2.0], [0.0, 1.0, 3.0]])
    weight = np.array([1.0, 2.0, 1.0])
    point, low, high = two_way_bootstrap(diff, weight, n_resamples=500)
    assert point == pytest.approx(6.0 / 8.0)
    assert low <= point <= high
    zero = two_way_bootstrap(np.zeros((2, 3)), weight)
    assert zero == (0.0, 0.0, 0.0)


def test_paired_nll_pairs_records_and_seeds_and_refuses_other_tokens():
    a = {0: [[3.0, 2], [5.0, 3]], 1: [[2.0, 2], [4.0, 3]]}
    b = {0: [[2.0, 2], [5.0, 3]], 1: [[2.0, 2], [3.0, 3]], 2: [[9.0, 2], [9.0, 3]]}
    result = paired_nll(a, b)
    assert result["delta"] == pytest.approx((1 + 0 + 0 + 1) / 10)
    assert (result["seeds"], result["records"]) == (2, 2)
    with pytest.raises(ValueError, match="different target tokens"):
        paired_nll(a, {0: [[1.0, 1], [1.0, 3]]})
    assert paired_scores({0: [0.5, 0.2]}, {0: [0.25, 0.2]})["delta"] == pytest.approx(0.125)


def _summary(zero_linear_pairs, lora_pairs=None):
    def arm(nll, pairs):
        return {"user_val": [nll, 0.0], "step0_max_abs_logit_diff": 0.0, "pairs": pairs}

    arms = {"sft": arm(3.0, {}), "zero_linear": arm(2.9, zero_linear_pairs)}
    if lora_pairs is not None:
        arms["lora_gated"] = arm(2.95, lora_pairs)
    return {"arms": arms}


def _pair(delta, low, high):
    return {"delta": delta, "low": low, "high": high}


def test_selection_rule_says_helps_only_when_both_controls_are_beaten():
    below, around = _pair(-0.02, -0.03, -0.01), _pair(-0.01, -0.03, 0.01)
    sft = {"user_val": _pair(-0.1, -0.2, -0.05), "temporal_val": _pair(-0.01, -0.02, 0.0)}
    helps = _summary({"sft": sft, "donor": {"user_val": below}, "const": {"user_val": below}})
    assert select_default(helps)["reasoner_helps"] == ["zero_linear"]
    not_donor = _summary({"sft": sft, "donor": {"user_val": around}, "const": {"user_val": below}})
    chosen = select_default(not_donor)
    assert chosen["reasoner_helps"] == [] and chosen["default"] == "zero_linear"
    worse_on_temporal = {"user_val": sft["user_val"], "temporal_val": _pair(0.01, 0.0, 0.02)}
    temporal = _summary(
        {"sft": worse_on_temporal, "donor": {"user_val": below}, "const": {"user_val": below}}
    )
    assert select_default(temporal)["reasoner_helps"] == []


def test_control_arms_share_the_capacity_and_rate_of_the_arm_they_control(setup, tmp_path):
    spec = _spec(setup, tmp_path)
    for name, arm in ARMS.items():
        if arm.control is None:
            continue
        controlled = ARMS[arm.controls_arm]
        mine, theirs = (finetune_config(a, spec, 0, 1e-4, str(tmp_path)) for a in (arm, controlled))
        assert mine == theirs, name
        tuned = {"sft": 1e-5}
        rate = bq.rate_for(name, tuned, bq.Options())
        assert rate is not None and rate == bq.rate_for(arm.controls_arm, tuned, bq.Options())


def test_missing_data_names_the_option_and_the_files(tmp_path):
    with pytest.raises(SystemExit, match="--data"):
        bq.check_data(None)
    with pytest.raises(SystemExit, match="user_val.jsonl"):
        bq.check_data(str(tmp_path))


def test_a_control_arm_is_measured_with_its_control_and_saved_without_it(setup, tmp_path):
    """The final save reloads the model and compares logits; the control's hooks must be off by then
    (before: SavedModelMismatchError on every control arm), but the final measurements still see it."""
    view = _view(setup)
    window = 224 + 3 + 8
    measure = _measure(setup)
    record = run_arm(
        ARMS["donor"], _spec(setup, tmp_path), 0, 1e-2, measure,
        control=Donor(donor_pool(view.train), window=window), keep_output=True,
    )  # fmt: skip
    saved = FlyThinkerForCausalLM.from_pretrained(tmp_path / "donor-seed0-lr0.01" / "model").eval()
    assert not saved.reasoner._forward_pre_hooks  # the saved model carries no control
    final = [e for e in record["evals"] if e["set"] == "temporal_val"][-1]["records"]
    plain = record_nll(saved, view.temporal, view.collate, measure.eval_batch_size)
    Donor(donor_pool(view.train), window=window).install(saved)
    with_donor = record_nll(saved, view.temporal, view.collate, measure.eval_batch_size)
    assert [n for n, _ in with_donor] == pytest.approx([n for n, _ in final], rel=1e-5, abs=1e-4)
    assert max(abs(a[0] - b[0]) for a, b in zip(plain, with_donor)) > 1e-3  # the control mattered
