"""Gradients, freezing, m̄ refresh and configuration errors."""

from __future__ import annotations

import pytest
import torch

from flythinker import FlyThinkerConfig, FlyThinkerForCausalLM
from tests.tiny_models import left_padded_batch, tiny_flythinker, tiny_llama_config, tiny_qwen2_config


def _loss(model):
    input_ids, attention_mask, _ = left_padded_batch([7, 5], seed=21)
    return model(
        input_ids, attention_mask=attention_mask, labels=input_ids.masked_fill(attention_mask == 0, -100)
    ).loss


def test_gradients_reach_both_models():
    model = tiny_flythinker(dtype=torch.float32).train()
    _loss(model).backward()
    for name in ("generator", "reasoner"):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert all(g is not None for g in grads), f"a {name} parameter got no gradient"
        assert sum(g.abs().sum().item() for g in grads) > 0


def test_frozen_reasoner_gets_no_gradient():
    model = tiny_flythinker(dtype=torch.float32).train()
    model.reasoner.requires_grad_(False)
    _loss(model).backward()
    assert all(p.grad is None for p in model.reasoner.parameters())
    assert all(p.grad is not None for p in model.generator.parameters())


def test_mean_norm_refreshes_after_optimizer_step_and_has_no_grad():
    model = tiny_flythinker(dtype=torch.float32).train()
    table = model.generator.get_input_embeddings().weight
    before = model.refresh_mean_embedding_norm().item()
    assert abs(before - table.detach().norm(dim=-1).mean().item()) <= 1e-6
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    _loss(model).backward()
    optimizer.step()
    after = model.refresh_mean_embedding_norm()
    assert not after.requires_grad
    assert abs(after.item() - table.detach().norm(dim=-1).mean().item()) <= 1e-6
    assert after.item() != before


def test_reasoner_wider_than_generator_needs_projection():
    with pytest.raises(ValueError, match="projection='linear'"):
        FlyThinkerConfig(
            generator_config=tiny_llama_config(hidden=16), reasoner_config=tiny_qwen2_config(hidden=32)
        )
    config = FlyThinkerConfig(
        generator_config=tiny_llama_config(hidden=16),
        reasoner_config=tiny_qwen2_config(hidden=32),
        projection="linear",
    )
    model = FlyThinkerForCausalLM(config).double()
    input_ids, attention_mask, _ = left_padded_batch([5], seed=22)
    assert torch.isfinite(model(input_ids, attention_mask=attention_mask).logits).all()
    assert model.fusion.projection.weight.shape == (16, 32)


def test_bad_projection_name_is_rejected():
    with pytest.raises(ValueError, match="projection must be one of"):
        FlyThinkerConfig(
            generator_config=tiny_qwen2_config(), reasoner_config=tiny_llama_config(), projection="pad"
        )


def test_inputs_embeds_are_rejected_with_a_reason():
    model = tiny_flythinker()
    with pytest.raises(ValueError, match="reasoner reads the same tokens"):
        model(input_ids=None, inputs_embeds=torch.zeros(1, 2, 32, dtype=torch.float64))


def test_get_text_config_is_the_generator_config():
    model = tiny_flythinker()
    assert model.config.get_text_config() is model.config.generator_config
    assert model.config.get_text_config().vocab_size == model.generator.config.vocab_size


def test_gradient_checkpointing_gives_the_same_gradients():
    reference = tiny_flythinker(dtype=torch.float64).train()
    checkpointed = tiny_flythinker(dtype=torch.float64).train()
    checkpointed.gradient_checkpointing_enable()
    assert (
        checkpointed.generator.model.gradient_checkpointing and checkpointed.reasoner.gradient_checkpointing
    )
    _loss(reference).backward()
    _loss(checkpointed).backward()
    for (name, a), (_, b) in zip(reference.named_parameters(), checkpointed.named_parameters()):
        assert (a.grad - b.grad).abs().max().item() <= 1e-10, name
