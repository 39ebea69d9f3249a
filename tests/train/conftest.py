"""Fixtures for the train tests: a tiny fine-tuning workspace (generator/reasoner checkpoints with a
ChatML tokenizer, synthetic data), the tiny offline byte-level BPE tokenizer, and the PEP fixture files."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from flythinker.train.synthetic import write_synthetic_dataset
from tests.fixtures import PEPS
from tests.tiny_models import build_tiny_tokenizer, tiny_llama_config, tiny_qwen2_config


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """Tiny generator/reasoner checkpoints with a ChatML tokenizer, and a small synthetic dataset."""
    root = tmp_path_factory.mktemp("finetune")
    tokenizer = build_tiny_tokenizer()
    vocab = len(tokenizer) + 4
    torch.manual_seed(0)
    generator = AutoModelForCausalLM.from_config(tiny_qwen2_config(hidden=32, vocab=vocab))
    generator.save_pretrained(root / "generator")
    tokenizer.save_pretrained(root / "generator")
    AutoModelForCausalLM.from_config(tiny_llama_config(hidden=16, vocab=vocab)).save_pretrained(
        root / "reasoner"
    )
    paths = write_synthetic_dataset(
        root / "data", n_users=2, n_train=5, n_test=1, min_profile=1, max_profile=2
    )
    return {"root": root, "train": str(paths["train"]), "tokenizer": tokenizer}


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def pep_files() -> list[str]:
    """The four PEP fixture splits (tests/fixtures/peps), sorted by name."""
    files = sorted(str(path) for path in PEPS.glob("*.jsonl"))
    assert len(files) == 4, f"tests/fixtures/peps holds {files}"
    return files
