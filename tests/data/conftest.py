"""Fixtures for the data tests: a tiny offline byte-level BPE tokenizer with a ChatML template."""

from __future__ import annotations

import glob
import os

import pytest

from tests.tiny_models import build_tiny_tokenizer

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
