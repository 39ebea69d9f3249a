"""Warm-start options of the fusion against a float64 re-implementation written out here.

Each option gets non-trivial values (a gate already opened, a centre, a trained W) so the test sees
its equation, not only its zero start; then: the zero start equals the generator bit for bit, and
incremental decoding equals the teacher-forced forward.
"""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import left_padded_batch, tiny_flythinker

OPTIONS = {
    "paper": {},
    "gate_scalar": {"fusion_gate": "scalar"},
    "gate_channel": {"fusion_gate": "channel"},
    "center": {"center_reasoner": True},
    "zero_linear": {"projection": "zero_linear"},
    "linear_gate_center": {"projection": "linear", "fusion_gate": "channel", "center_reasoner": True},
}


def _open(model, seed: int = 3):
    """Give every warm-start tensor a non-zero value (as training would) and a λ warm-up factor."""
    generator = torch.Generator().manual_seed(seed)
    fusion = model.fusion
    with torch.no_grad():
        if fusion.gate_logit is not None:
            fusion.gate_logit.copy_(
                torch.randn(fusion.gate_logit.shape, generator=generator, dtype=torch.float64)
            )
        if fusion.reasoner_center is not None:
            fusion.reasoner_center.copy_(
                torch.randn(fusion.reasoner_center.shape, generator=generator, dtype=torch.float64)
            )
        if fusion.projection is not None:
            fusion.projection.weight.copy_(
                0.3 * torch.randn(fusion.projection.weight.shape, generator=generator, dtype=torch.float64)
            )
    fusion.lambda_scale = 0.75
    return model


def plain_logits(model, input_ids, attention_mask):
    """The fusion equation position by position with plain tensor ops (independent of the library)."""
    generator, reasoner, fusion, config = model.generator, model.reasoner, model.fusion, model.config
    positions = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    h = reasoner(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).last_hidden_state
    table = generator.get_input_embeddings().weight
    mean_norm = table.norm(dim=-1).mean()
    lam = config.fusion_lambda * fusion.lambda_scale
    x = table[input_ids].clone()
    for b in range(input_ids.shape[0]):
        for i in range(1, input_ids.shape[1]):
            if not attention_mask[b, i - 1]:
                continue
            u = h[b, i - 1]
            if config.projection == "linear":
                u = fusion.projection.weight @ u
            if config.center_reasoner:
                u = u - fusion.reasoner_center
            r = u * mean_norm / u.norm()
            if config.fusion_gate != "none":
                r = torch.tanh(fusion.gate_logit) * r
            if config.projection == "zero_linear":
                x[b, i] = x[b, i] + lam * (fusion.projection.weight @ r)
            else:
                x[b, i, : r.shape[0]] = x[b, i, : r.shape[0]] + lam * r
    return generator(inputs_embeds=x, attention_mask=attention_mask, position_ids=positions).logits


@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_option_matches_a_float64_reimplementation(option):
    model = _open(tiny_flythinker(reasoner_hidden=16, generator_hidden=32, **OPTIONS[option]))
    input_ids, attention_mask, _ = left_padded_batch([9, 5, 1, 9], seed=1)
    positions = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        ours = model(input_ids, attention_mask=attention_mask).logits
        expected = plain_logits(model, input_ids, attention_mask)
        bare = model.generator(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions
        ).logits
    real = attention_mask.bool()
    assert (ours[real] - expected[real]).abs().max().item() <= 1e-10
    assert (ours[real] - bare[real]).abs().max().item() > 1e-4  # the option is really on


@pytest.mark.parametrize("option", ["gate_scalar", "gate_channel", "zero_linear", "linear_gate_center"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_a_closed_start_is_exactly_the_generator(option, dtype):
    """With α = 0 (or W = 0) the logits equal the generator's alone, bit for bit."""
    model = tiny_flythinker(dtype=dtype, **OPTIONS[option])
    input_ids, attention_mask, _ = left_padded_batch([9, 5, 1, 9], seed=2)
    positions = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        ours = model(input_ids, attention_mask=attention_mask).logits
        bare = model.generator(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions
        ).logits
    real = attention_mask.bool()
    assert torch.equal(ours[real], bare[real])


def test_closed_start_still_trains_the_gate():
    """At α = 0 the injection is 0 but d loss / d α is not: training opens the gate."""
    model = tiny_flythinker(dtype=torch.float32, fusion_gate="scalar").train()
    input_ids, attention_mask, _ = left_padded_batch([7, 5], seed=21)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    model(input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
    assert model.fusion.gate_logit.grad is not None and model.fusion.gate_logit.grad.abs().item() > 0


@pytest.mark.parametrize("option", list(OPTIONS))
def test_incremental_decoding_equals_teacher_forcing(option):
    """Cached one-token steps reproduce the full forward's logits at every position."""
    model = _open(tiny_flythinker(**OPTIONS[option]))
    input_ids, attention_mask, _ = left_padded_batch([10, 6], seed=4)
    with torch.no_grad():
        full = model(input_ids, attention_mask=attention_mask).logits
        cache = model.new_cache()
        prompt = 5  # the shorter row starts at column 4: its prompt holds one real token
        steps = [model(input_ids[:, :prompt], attention_mask=attention_mask[:, :prompt], cache=cache).logits]
        for t in range(prompt, input_ids.shape[1]):
            steps.append(
                model(input_ids[:, t : t + 1], attention_mask=attention_mask[:, : t + 1], cache=cache).logits
            )
    stepped = torch.cat(steps, dim=1)
    real = attention_mask.bool()
    assert (stepped[real] - full[real]).abs().max().item() <= 1e-10


@pytest.mark.parametrize("option", ["gate_channel", "center", "zero_linear"])
def test_decoding_engine_equals_generate_with_options(option):
    from flythinker.decoding import generate

    model = _open(tiny_flythinker(**OPTIONS[option]))
    input_ids, attention_mask, _ = left_padded_batch([7, 3], seed=5)
    reference = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=6, do_sample=False,
                               pad_token_id=0)  # fmt: skip
    out = generate(model, input_ids, attention_mask, max_new_tokens=6, schedule="sequential")
    assert torch.equal(out.sequences[:, -6:], reference[:, -6:])


def test_zero_reasoner_state_gives_no_injection_and_no_nan():
    """An exactly-zero state is never divided by its zero norm, even with norm_eps = 0."""
    model = tiny_flythinker()
    input_ids, attention_mask, _ = left_padded_batch([8], seed=6)
    sources = model.reasoner(input_ids=input_ids).last_hidden_state.clone()
    sources[0, 3] = 0.0
    gate = torch.ones_like(input_ids, dtype=torch.bool)
    embeds = model.generator.get_input_embeddings()(input_ids)
    fused = model.fusion(embeds, sources, gate, model.generator.get_input_embeddings().weight)
    assert torch.isfinite(fused).all()
    assert torch.equal(fused[0, 4], embeds[0, 4])  # position 4 reads the zero state of position 3
    assert not torch.equal(fused[0, 5], embeds[0, 5])


def test_lambda_warmup_scale_and_bake():
    from flythinker.train.warm_start import bake_lambda_scale, lambda_scale_at, set_lambda_scale

    assert [lambda_scale_at(s, 4) for s in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]
    model = tiny_flythinker()
    input_ids, attention_mask, _ = left_padded_batch([8], seed=7)
    set_lambda_scale(model, 0.0)
    with torch.no_grad():
        assert torch.equal(model(input_ids, attention_mask=attention_mask).logits,
                           model.generator(input_ids=input_ids, attention_mask=attention_mask).logits)  # fmt: skip
        set_lambda_scale(model, 0.25)
        scaled = model(input_ids, attention_mask=attention_mask).logits
        bake_lambda_scale(model)
        assert model.fusion.lambda_scale == 1.0 and model.config.fusion_lambda == pytest.approx(0.125)
        assert (model(input_ids, attention_mask=attention_mask).logits - scaled).abs().max().item() <= 1e-12
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        set_lambda_scale(model, float("nan"))


def test_reasoner_center_is_estimated_saved_and_reloaded(tmp_path):
    from flythinker import FlyThinkerForCausalLM
    from flythinker.train.warm_start import estimate_reasoner_center

    model = tiny_flythinker(center_reasoner=True)
    input_ids, attention_mask, _ = left_padded_batch([9, 4], seed=8)
    center = estimate_reasoner_center(model, [{"input_ids": input_ids, "attention_mask": attention_mask}])
    h = model.reasoner(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=(attention_mask.cumsum(-1) - 1).clamp_min(0)).last_hidden_state  # fmt: skip
    assert torch.allclose(center, h[attention_mask.bool()].mean(0), atol=1e-12)
    model.save_pretrained(tmp_path)
    loaded = FlyThinkerForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)
    assert torch.equal(loaded.fusion.reasoner_center, model.fusion.reasoner_center)
