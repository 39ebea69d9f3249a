"""Fixtures for the kernel tests.

Without CUDA, Triton kernels run in Triton's CPU interpreter: ``TRITON_INTERPRET=1`` is set by
``tests/conftest.py`` before anything imports triton. With CUDA the same tests run the compiled
kernels on the GPU instead.
"""

from __future__ import annotations

import math

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

DEVICE = "cuda" if HAS_CUDA else "cpu"


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture
def force_triton(monkeypatch):
    """Route the dispatching functionals to the Triton kernels (interpreter on CPU)."""
    pytest.importorskip("triton")
    monkeypatch.delenv("FLYTHINKER_DISABLE_TRITON", raising=False)
    monkeypatch.setenv("FLYTHINKER_FORCE_TRITON", "1")


def _nan_empty(*size, dtype, device):
    t = torch.empty(*size, dtype=dtype, device=device)
    if t.dtype.is_floating_point:
        t.fill_(math.nan)
    return t


@pytest.fixture
def poison(monkeypatch):
    """Every buffer a kernel is supposed to fill starts as NaN, so unwritten elements fail comparisons."""
    pytest.importorskip("triton")
    from flythinker.kernels import linear_cross_entropy, triton_injection

    monkeypatch.setattr(triton_injection, "_empty", _nan_empty)
    monkeypatch.setattr(linear_cross_entropy, "_empty", _nan_empty)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
