"""The reasoner and the generator at once inside a decode-only step (opt-in: ``FLYTHINKER_VLLM_OVERLAP=1``).

In a step where every request has exactly one token (``LatentSlot.decode_only``), G's input
x̃_t = E_G[x_t] + inj(u_{t-1}) reads u_{t-1} from the request's slot only, and R(x_t) is needed only to
write u_t into the slot for the next step: the two stacks are independent. Then R runs

* on CUDA, on a side stream (ordered after everything queued before the step, joined before the slot
  write);
* elsewhere, on one worker thread (PyTorch releases the GIL inside its kernels; the thread gets its
  own OpenMP team), under ``torch.inference_mode`` as the engine's own thread.

Steps holding a prefill chunk keep the sequential order (inside a chunk, G at i needs R at i-1).
The tokens are the sequential ones by construction (the same operations on the same inputs); this is
tested on CPU (``tests/test_overlap.py``). Its speed has not been measured; CUDA streams are untested
and CUDA graphs are refused anyway (``limits.py``). With ``torch.compile`` (``enforce_eager=False``) the
reasoner's compiled backbone would run on a second thread: not tested, so the option requires eager.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

ENV = "FLYTHINKER_VLLM_OVERLAP"


def overlap_requested() -> bool:
    """``FLYTHINKER_VLLM_OVERLAP``: "1" on, "" / "0" off; anything else is an error naming the variable."""
    value = os.environ.get(ENV, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"{ENV} must be 0 or 1, got {value!r}")
    return value == "1"


class ReasonerOverlap:
    """``start(fn, *args)`` runs ``fn`` beside the caller; ``finish(handle)`` waits and returns its result."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.pool = None if self.stream is not None else ThreadPoolExecutor(1, "flythinker-reasoner")

    def start(self, fn: Callable[..., torch.Tensor], *args: Any) -> Future | torch.Tensor:
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                return fn(*args)
        return self.pool.submit(_inference, fn, *args)

    def finish(self, handle: Future | torch.Tensor) -> torch.Tensor:
        if self.stream is not None:
            main = torch.cuda.current_stream(self.device)
            main.wait_stream(self.stream)
            handle.record_stream(main)  # allocated on the side stream, read (and freed) on the main one
            return handle
        return handle.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def _inference(fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    with torch.inference_mode():
        return fn(*args)
