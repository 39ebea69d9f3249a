"""Backend choice for the fused ops: Triton kernel or pure-PyTorch reference.

Rules (docs/design.md §4), evaluated on every call (environment read at call time, never at import time):

* ``FLYTHINKER_DISABLE_TRITON=1`` -> always the reference.
* ``FLYTHINKER_FORCE_TRITON=1``   -> always the Triton kernel. On CPU tensors this needs
  ``TRITON_INTERPRET=1`` (Triton's interpreter executes the kernel code with NumPy); without it, or
  without triton installed, a ``RuntimeError`` says so instead of silently falling back.
* otherwise                       -> Triton when every tensor is on CUDA and triton imports, else the reference.

``TRITON_INTERPRET`` must be set before the first fused op runs: the ``@triton.jit`` kernels live in
modules (``triton_injection``, ``triton_linear_cross_entropy``) that are imported lazily on first use,
and Triton decides between compiling and interpreting when a kernel is decorated.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

__all__ = ["triton_available", "use_triton", "interpreting", "check_kernel_device"]

_TRUE = {"1", "true", "yes", "on"}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET`` asks Triton to run kernels in its CPU interpreter."""
    return _env_flag("TRITON_INTERPRET")


@functools.lru_cache(maxsize=1)
def _triton_spec_found() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def triton_available() -> bool:
    """Whether ``import triton`` can succeed (checked without importing it)."""
    return _triton_spec_found()


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """Decide the backend for one call of a fused op whose inputs are ``tensors`` (``None`` ignored)."""
    if _env_flag("FLYTHINKER_DISABLE_TRITON"):
        return False
    present = [t for t in tensors if t is not None]
    on_cuda = bool(present) and all(t.is_cuda for t in present)
    if _env_flag("FLYTHINKER_FORCE_TRITON"):
        if not triton_available():
            raise RuntimeError("FLYTHINKER_FORCE_TRITON=1 but triton is not installed (pip install triton)")
        if not on_cuda and not interpreting():
            devices = sorted({str(t.device) for t in present})
            raise RuntimeError(
                f"FLYTHINKER_FORCE_TRITON=1 with tensors on {devices}: Triton needs CUDA tensors, or "
                "TRITON_INTERPRET=1 set before the first fused op to run the kernels in the CPU interpreter"
            )
        return True
    return on_cuda and triton_available()


def check_kernel_device(kernel: object, tensor: torch.Tensor) -> None:
    """Fail clearly when a compiled (non-interpreted) Triton kernel is about to receive CPU tensors.

    Happens when the kernel module was first imported before ``TRITON_INTERPRET=1`` was set.
    """
    if not tensor.is_cuda and type(kernel).__name__ != "InterpretedFunction":
        raise RuntimeError(
            f"Triton kernel {getattr(kernel, '__name__', kernel)!r} got {tensor.device} tensors but was compiled "
            "for the GPU: set TRITON_INTERPRET=1 before flythinker's Triton kernels are first used (they are "
            "decorated on first import), or use CUDA tensors"
        )
