"""Session-wide test setup, loaded before any test module is imported.

Without CUDA, Triton kernels run in Triton's CPU interpreter. ``TRITON_INTERPRET=1`` must be set
before triton is first imported anywhere (transformers and torch may import it while other test
folders are collected): triton decorates its own standard-library functions at import time, and
kernels interpreted later cannot call functions that were compiled-mode decorated.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def word_tokenizer():
    """The word-level tokenizer of tests/word_models.py (reward, judge and GRPO tests)."""
    from tests.word_models import build_word_tokenizer

    return build_word_tokenizer()


@pytest.fixture()
def tiny_lm(word_tokenizer):
    from tests.word_models import tiny_llama

    return tiny_llama(len(word_tokenizer))
