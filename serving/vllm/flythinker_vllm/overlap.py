"""The reasoner and the generator at once inside a decode-only step (opt-in: ``FLYTHINKER_VLLM_OVERLAP=1``).

In a step where every request has exactly one token (``LatentSlot.decode_only``), G's input
x̃_t = E_G[x_t] + inj(u_{t-1}) reads u_{t-1} from the request's slot only, and R(x_t) is needed only to
write u_t into the slot for the next step: the two stacks are independent. Then R runs on a side CUDA
stream, ordered after everything queued before the step and joined before the slot write.

GPU only (``limits.py`` refuses the option elsewhere at engine start): on CPU the reasoner ran on a
second thread, and vLLM's CPU GEMMs are not safe on two threads (the SmolLM2 pair's engine died with
SIGSEGV). Steps holding a prefill chunk keep the sequential order (inside a chunk, G at i needs R at
i-1). The tokens are the sequential ones by construction (the same operations on the same inputs),
tested on a GPU by ``tests/test_overlap.py`` (``make gpu-check``); its speed has not been measured.
CUDA graphs are refused anyway (``limits.py``), and with ``torch.compile`` (``enforce_eager=False``)
the reasoner's compiled backbone beside the main stream is untested, so the option requires eager.
"""

from __future__ import annotations

import os
from collections.abc import Callable
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
    """``start(fn, *args)`` queues ``fn`` on a side stream; ``finish(handle)`` joins it and returns its result."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def start(self, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            return fn(*args)

    def finish(self, handle: torch.Tensor) -> torch.Tensor:
        main = torch.cuda.current_stream(self.device)
        main.wait_stream(self.stream)
        handle.record_stream(main)  # allocated on the side stream, read (and freed) on the main one
        return handle
