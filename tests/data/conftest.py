"""Fixtures for the data tests: a tiny offline byte-level BPE tokenizer with a ChatML template."""

from __future__ import annotations

import glob
import os

import pytest

PEPS_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "peps")
PEPS_DIR = os.path.normpath(os.environ.get("FLYTHINKER_PEPS_DIR", PEPS_DIR))

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS = [
    "This PEP proposes a new module for the standard library.",
    "Title: How to Change Python's Grammar\nAbstract: There's more to changing Python's grammar.",
    "Generate an abstract for the title \"Executing modules as scripts\"",
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
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>", unk_token=None)
    fast.chat_template = CHATML_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def pep_files() -> list[str]:
    files = sorted(glob.glob(os.path.join(PEPS_DIR, "*.jsonl")))
    if not files:
        pytest.skip(f"PEP data not found under {PEPS_DIR}")
    return files
