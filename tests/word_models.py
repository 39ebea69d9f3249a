"""A tiny word-level fast tokenizer over the reward prompts and tiny random Llama LMs (reward, judge and
GRPO tests of every folder use them; the fixtures are in tests/conftest.py)."""

from __future__ import annotations

import re

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from flythinker.rewards import prompts
from flythinker.train import grpo

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
EXTRA_TEXT = """
I feel sad lonely angry tired happy worried because my friend dog job exam mother left failed moved away.
You are not alone that sounds really hard I am here for you it makes sense to feel this way.
Whatever just get over it stop complaining nobody cares figure it out yourself.
assistant user system good bad kind cold warm reply
"""


def _corpus() -> str:
    parts = [
        prompts.SCORE_PREFIX,
        prompts.JUDGE_SYSTEM,
        prompts.BYSTANDER_SYSTEM,
        prompts.CRITERIA_SYSTEM,
        grpo.POLICY_SYSTEM,
        grpo.POLICY_USER,
        EXTRA_TEXT,
        *prompts.RUBRICS.values(),
        *prompts.BYSTANDER_ITEMS.values(),
    ]
    return "\n".join(parts)


def build_word_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(set(re.findall(r"\w+|[^\w\s]", _corpus())) | {str(d) for d in range(10)} | {"#", "-", ":"})
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(vocab_size: int, hidden: int = 32, layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                         tie_word_embeddings=False)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def tiny_flythinker_policy(vocab: int):
    """A one-layer FlyThinker (Qwen2 d=32 generator, Llama d=16 reasoner) over ``vocab`` ids (policies)."""
    from transformers import LlamaConfig, Qwen2Config

    from flythinker import FlyThinkerConfig, FlyThinkerForCausalLM

    torch.manual_seed(0)
    common = dict(
        vocab_size=vocab, max_position_embeddings=1024, pad_token_id=0, bos_token_id=2, eos_token_id=3
    )
    gen = Qwen2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        **common,
    )
    rea = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        **common,
    )
    return FlyThinkerForCausalLM(FlyThinkerConfig(generator_config=gen, reasoner_config=rea))
