"""`--recipe` through the fine-tuning entry point: what each recipe builds, trains and saves."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from flythinker.modeling.modeling_flythinker import FlyThinkerForCausalLM
from flythinker.train.finetune import run_finetune
from flythinker.train.recipes import DEFAULT_RECIPE, RECIPES, get_recipe
from flythinker.train.warm_start import boost_warm_start_parameters
from tests.finetune_helpers import workspace_config
from tests.tiny_models import tiny_flythinker


def _config(workspace, output_dir, **overrides):
    options = dict(
        max_target_tokens=64, max_steps=3, global_batch_size=2, save_steps=100, seed=3, logging_steps=1
    )
    return workspace_config(workspace, output_dir, **{**options, **overrides})


def test_recipe_table_and_default():
    assert get_recipe("default") is RECIPES[DEFAULT_RECIPE]
    assert RECIPES["paper"].config_overrides == {} and RECIPES["sft"].method == "sft"
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("bogus")


def test_the_default_recipe_trains_what_the_quality_experiment_measured(workspace, tmp_path):
    """The default's arm (bench/quality, `zero_linear`) freezes the reasoner: so does `flythinker train`
    with no --reasoner-mode, and the run records it; an explicit mode or another recipe still trains it."""
    run_finetune(_config(workspace, tmp_path / "default", max_steps=2))
    recorded = json.loads((tmp_path / "default" / "finetune_config.json").read_text())
    assert recorded["recipe"] == "default" and recorded["reasoner_mode"] == "freeze"
    assert recorded["projection"] == "zero_linear"
    trained = FlyThinkerForCausalLM.from_pretrained(tmp_path / "default" / "model").reasoner.state_dict()
    base = AutoModelForCausalLM.from_pretrained(workspace["root"] / "reasoner").model.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in base.items())
    for options, mode in (({"reasoner_mode": "full"}, "full"), ({"recipe": "gated"}, "full")):
        config = _config(workspace, tmp_path / mode, **options)
        config.resolve_options()
        assert config.reasoner_mode == mode
    sft = _config(workspace, tmp_path / "sft", method="sft", reasoner=None, reasoner_mode="freeze")
    with pytest.raises(ValueError, match="--reasoner-mode"):
        sft.resolve_options()


def test_explicit_options_override_the_recipe(workspace, tmp_path):
    config = _config(workspace, tmp_path / "x", recipe="gate_center", fusion_gate="channel")
    config.resolve_recipe()
    assert config.fusion_gate == "channel" and config.center_reasoner is True
    assert config.center_reasoner_batches == RECIPES["gate_center"].center_reasoner_batches
    with pytest.raises(ValueError, match="--recipe must be one of"):
        _config(workspace, tmp_path / "y", recipe="sft").validate()


def test_paper_recipe_trains_the_papers_model(workspace, tmp_path):
    run_finetune(_config(workspace, tmp_path / "paper", recipe="paper"))
    saved = json.loads((tmp_path / "paper" / "model" / "config.json").read_text())
    assert (
        saved["fusion_gate"] == "none"
        and saved["center_reasoner"] is False
        and saved["projection"] == "zero_pad"
    )
    model = FlyThinkerForCausalLM.from_pretrained(tmp_path / "paper" / "model")
    assert model.fusion.gate_logit is None and model.fusion.reasoner_center is None


def test_gate_center_recipe_opens_the_gate_and_saves_the_centre(workspace, tmp_path):
    run_finetune(_config(workspace, tmp_path / "gc", recipe="gate_center"))
    model = FlyThinkerForCausalLM.from_pretrained(tmp_path / "gc" / "model")
    assert model.config.fusion_gate == "scalar" and model.config.center_reasoner is True
    assert model.fusion.gate_logit.abs().item() > 1e-3  # trained at lr × 100 from α = 0
    assert model.fusion.reasoner_center.abs().max().item() > 0  # estimated before step 0


def test_lambda_warmup_recipe_bakes_an_unfinished_ramp(workspace, tmp_path):
    run_finetune(_config(workspace, tmp_path / "lw", recipe="lambda_warmup", lambda_warmup_steps=10))
    saved = json.loads((tmp_path / "lw" / "model" / "config.json").read_text())
    # the last of 3 steps ran at s = 2/10: the saved λ is the one that was trained
    assert saved["fusion_lambda"] == pytest.approx(0.5 * 2 / 10)


def test_warm_start_group_gets_the_multiplied_lr_without_decay():
    model = tiny_flythinker(dtype=torch.float32, fusion_gate="scalar")
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in model.named_parameters() if "norm" not in n], "weight_decay": 0.1}],
        lr=1e-3,
    )
    assert boost_warm_start_parameters(optimizer, model, 100.0) == 1
    group = optimizer.param_groups[-1]
    assert group["params"] == [model.fusion.gate_logit] and group["lr"] == pytest.approx(0.1)
    assert group["weight_decay"] == 0.0
    assert all(model.fusion.gate_logit is not p for g in optimizer.param_groups[:-1] for p in g["params"])


def _gated_step(workspace, init_std: float):
    """One backward of a zero_linear + scalar-gate FlyThinker whose W starts at N(0, std²) (0: W = 0)."""
    from flythinker.train.warm_start import init_projection

    root = workspace["root"]
    torch.manual_seed(0)
    model = FlyThinkerForCausalLM.from_components(
        generator=str(root / "generator"), reasoner=str(root / "reasoner"),
        projection="zero_linear", fusion_gate="scalar",
    )  # fmt: skip
    if init_std:
        init_projection(model, init_std)
    ids = torch.tensor([[5, 9, 13, 17, 21, 25]])
    out = model(input_ids=ids, labels=ids, return_logits=True)
    out.loss.backward()
    return model, out.logits


def test_gated_recipe_starts_at_the_generator_and_opens_where_w_zero_cannot(workspace):
    model, logits = _gated_step(workspace, 0.02)
    base = model.generator(input_ids=torch.tensor([[5, 9, 13, 17, 21, 25]])).logits
    assert torch.equal(logits, base)  # the closed gate: step 0 is the generator bit for bit
    assert float(model.fusion.gate_logit.grad.abs()) > 0  # α moves at step 1, and W and R follow
    closed, _ = _gated_step(workspace, 0.0)
    assert float(closed.fusion.gate_logit.grad.abs()) == 0.0  # W = 0 behind a closed gate: nothing moves
    assert float(closed.fusion.projection.weight.grad.abs().max()) == 0.0
    assert RECIPES["gated"].projection_init_std > 0


def test_projection_init_needs_a_gate(workspace, tmp_path):
    from flythinker.train.warm_start import init_projection

    root = workspace["root"]
    model = FlyThinkerForCausalLM.from_components(
        generator=str(root / "generator"), reasoner=str(root / "reasoner"), projection="zero_linear"
    )
    with pytest.raises(ValueError, match="fusion_gate"):
        init_projection(model, 0.02)
    with pytest.raises(ValueError, match="--projection-init-std"):
        _config(workspace, tmp_path / "x", projection_init_std=0.02, projection="zero_linear").validate()
