"""Tiny FlyThinker pairs for the plugin's tests: Llama stacks with head size 64 (what vLLM's CPU attention runs)."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_llama_config(seed_width: int = 128, layers: int = 2, vocab: int = 384, **overrides):
    from transformers import LlamaConfig

    values = dict(
        vocab_size=vocab,
        hidden_size=seed_width,
        intermediate_size=2 * seed_width,
        num_hidden_layers=layers,
        num_attention_heads=seed_width // 64,
        num_key_value_heads=seed_width // 64,
        head_dim=64,
        max_position_embeddings=1024,
        initializer_range=0.2,
        tie_word_embeddings=False,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def save_tiny_pair(directory: Path, seed: int = 0, **fusion) -> Path:
    """A random FlyThinker (G: 2 layers, d=128; R: 1 layer, d=64 unless overridden) written by save_pretrained."""
    from flythinker import FlyThinkerConfig, FlyThinkerForCausalLM

    torch.manual_seed(seed)
    reasoner_width = fusion.pop("reasoner_width", 64)
    config = FlyThinkerConfig(
        generator_config=tiny_llama_config(128, layers=2),
        reasoner_config=tiny_llama_config(reasoner_width, layers=1, intermediate_size=192),
        **fusion,
    )
    model = FlyThinkerForCausalLM(config).eval()
    with torch.no_grad():  # warm-start options start as identities: move them so that they matter
        for name, tensor in [*model.fusion.named_parameters(), *model.fusion.named_buffers()]:
            if name in ("gate_logit", "reasoner_center") or (
                name == "projection.weight" and tensor.abs().max() == 0
            ):
                tensor.normal_(0.0, 0.5)
    model.save_pretrained(directory)
    return Path(directory)
