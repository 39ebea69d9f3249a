"""Fixtures for the train tests: a tiny fine-tuning workspace (generator/reasoner checkpoints with a
ChatML tokenizer, synthetic data), the tiny offline byte-level BPE tokenizer, and the PEP files."""

from __future__ import annotations

import glob
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from flythinker.train.synthetic import write_synthetic_dataset
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


PEPS_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "peps")
PEPS_DIR = os.path.normpath(os.environ.get("FLYTHINKER_PEPS_DIR", PEPS_DIR))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def pep_files() -> list[str]:
    files = sorted(glob.glob(os.path.join(PEPS_DIR, "*.jsonl")))
    if not files:
        pytest.skip(f"PEP data not found under {PEPS_DIR}")
    return files
