"""The tiny FlyThinker of the transformers-compatibility tests: a standard model tester (the
interface ``ModelTesterMixin`` reads) and helpers for the generation checks."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, Qwen2Config

from flythinker import FlyThinkerConfig, FlyThinkerForCausalLM


def random_attention_mask(batch_size: int, length: int) -> torch.Tensor:
    """Random 0/1 mask whose last column is 1 (as transformers' testers build it)."""
    mask = torch.randint(0, 2, (batch_size, length))
    mask[:, -1] = 1
    return mask


class FlyThinkerModelTester:
    """Tiny Qwen2 generator (d=32, 2 layers) + Llama reasoner (d=16, 2 layers), head_dim 8."""

    def __init__(self, parent, batch_size: int = 2, seq_length: int = 7, vocab_size: int = 99):
        self.parent = parent
        self.batch_size, self.seq_length, self.vocab_size = batch_size, seq_length, vocab_size
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = 32, 2, 4
        self.is_training = True
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2

    def generator_config(self) -> Qwen2Config:
        return Qwen2Config(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=37,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=True,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
        )

    def reasoner_config(self) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=64,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
        )

    def get_config(self) -> FlyThinkerConfig:
        return FlyThinkerConfig(
            generator_config=self.generator_config(),
            reasoner_config=self.reasoner_config(),
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
        )

    def prepare_config_and_inputs_for_common(self):
        # random ids, pad id 0 included (a row may start with it: its reasoner state can be exactly 0)
        input_ids = torch.randint(0, self.vocab_size, (self.batch_size, self.seq_length))
        attention_mask = random_attention_mask(self.batch_size, self.seq_length)
        return self.get_config(), {"input_ids": input_ids, "attention_mask": attention_mask}


def tiny_model(dtype=torch.float64, seed=0, attn_implementation="sdpa", **config_kwargs):
    torch.manual_seed(seed)
    tester = FlyThinkerModelTester(None)
    config = tester.get_config()
    for key, value in config_kwargs.items():
        setattr(config, key, value)
    config._attn_implementation = attn_implementation
    for sub in (config.generator_config, config.reasoner_config):
        sub._attn_implementation = attn_implementation
    return FlyThinkerForCausalLM(config).to(dtype).eval()


def prompt():
    """Two rows, the second left-padded by 2 (pad id 0 never appears among real tokens)."""
    input_ids = torch.tensor([[5, 9, 14, 20, 7, 33], [0, 0, 41, 8, 17, 62]])
    attention_mask = (input_ids != 0).long()
    return input_ids, attention_mask


def teacher_forced_logits(model, sequences, attention_mask):
    with torch.no_grad():
        return model(sequences, attention_mask=attention_mask, use_cache=False).logits
