"""Tiny random models built from configs (no hub): shared by every test folder."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, Qwen2Config

from flythinker import FlyThinkerConfig, FlyThinkerForCausalLM

VOCAB = 96


def tiny_qwen2_config(hidden: int = 32, layers: int = 2, vocab: int = VOCAB, tie: bool = True) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=None,
    )


def tiny_llama_config(
    hidden: int = 16, layers: int = 2, vocab: int = VOCAB, tie: bool = False
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden // 2,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=None,
    )


def tiny_flythinker(
    reasoner_hidden: int = 16,
    generator_hidden: int = 32,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    **config_kwargs,
) -> FlyThinkerForCausalLM:
    """Qwen2 generator (tied embeddings) + Llama reasoner, random weights, eval mode."""
    torch.manual_seed(seed)
    config = FlyThinkerConfig(
        generator_config=tiny_qwen2_config(hidden=generator_hidden),
        reasoner_config=tiny_llama_config(hidden=reasoner_hidden),
        **config_kwargs,
    )
    return FlyThinkerForCausalLM(config).to(dtype).eval()


def teacher_forced_greedy(model, input_ids, attention_mask, steps):
    """Step-by-step argmax of the full (no-cache) forward over the growing sequence."""
    ids, mask, logits_per_step = input_ids, attention_mask, []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(ids, attention_mask=mask).logits[:, -1]
        logits_per_step.append(logits)
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return ids, torch.stack(logits_per_step, dim=1)


def left_padded_batch(lengths: list[int], seed: int = 0, vocab: int = VOCAB, pad_id: int = 0):
    """Random rows of the given lengths, left-padded with ``pad_id``: (input_ids, attention_mask, rows)."""
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, vocab, (n,), generator=generator) for n in lengths]
    width = max(lengths)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, width - len(row) :] = row
        attention_mask[b, width - len(row) :] = 1
    return input_ids, attention_mask, rows


CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS = [
    "This PEP proposes a new module for the standard library.",
    "Title: How to Change Python's Grammar\nAbstract: There's more to changing Python's grammar.",
    'Generate an abstract for the title "Executing modules as scripts"',
    "The quick brown fox jumps over the lazy dog. It is a guide to action.",
    "You are a writing assistant. Write in the personal style of the user whose earlier writing is shown.",
    "Earlier writing by this user: match their vocabulary, tone, structure and length.",
]


def build_tiny_tokenizer():
    """A byte-level BPE (GPT-2 style pre-tokenizer, like SmolLM2) trained on a few strings.

    Every byte is in the alphabet, so any text encodes and decodes losslessly.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<|im_start|>",
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast
