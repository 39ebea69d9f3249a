"""The generator's LM head shared between the two CPU processes of a ``processes`` decode step.

In a decode step the generator's decoder and the reasoner run side by side, each on its own cores;
the generator's LM head comes last (V × d_G: 113 MB of SmolLM2-135M's 538 MB of fp32 weights, read
for every token), and by then the reasoner's worker has usually finished its step and sits idle.
The head's rows are independent, ``logits[:, v] = h · W[v] (+ b[v])``, so the caller computes rows
``[0, cut)`` while the worker computes ``[cut, V)``; the step then ends when the later of the two ends.

Exactness: on this machine's BLAS the concatenation equals the whole head bit for bit when the cut is
a multiple of :data:`ROW_ALIGN` rows (float32, every batch size tried), but not everywhere (float64 at
4 or more rows is not). So :func:`slices_are_exact` probes each weight at each batch size once, on the
real shapes, and where the probe finds a difference the head is not split for that batch size.

:class:`HeadBalancer` picks ``cut`` each step so both sides finish together::

    caller:  c_p · cut        worker:  lag + c_w · (V − cut)     ⇒   cut = (lag + c_w · V) / (c_p + c_w)

``c_p``, ``c_w``: measured seconds per head row on each side; ``lag``: from the caller's request to the
worker starting on it (still finishing the reasoner's step, plus the message). A slow reasoner makes
``lag`` large and the caller keeps the whole head (``cut = V``): never slower than not sharing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ROW_ALIGN = 64  # head slices start and end on multiples of this many rows (V's own tail aside)
MIN_SHARE = 0.05  # a worker share below this fraction of V is not worth a request
SMOOTHING = 0.3  # weight of the newest observation in the running estimates

_EXACT: dict[tuple, bool] = {}


def head_parameters(output_embeddings) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight [V, d], bias [V] or None) of a plain linear LM head on CPU, else None (never shared)."""
    weight = getattr(output_embeddings, "weight", None)
    if not isinstance(output_embeddings, torch.nn.Linear) or weight is None or weight.device.type != "cpu":
        return None
    return weight, output_embeddings.bias


def head_rows(weight: torch.Tensor, bias: torch.Tensor | None, hidden: torch.Tensor, start: int, stop: int):
    """Raw head outputs of rows ``[start, stop)``: ``hidden @ W[start:stop]ᵀ (+ b[start:stop])``."""
    return torch.nn.functional.linear(hidden, weight[start:stop], None if bias is None else bias[start:stop])


def slices_are_exact(weight: torch.Tensor, bias: torch.Tensor | None, batch: int) -> bool:
    """Whether aligned row slices of this head reproduce the whole head bit for bit here for ``batch``
    rows of input (a probe at three cuts on the real shapes; cached per weight and batch size)."""
    key = (
        weight.data_ptr(),
        tuple(weight.shape),
        weight.dtype,
        None if bias is None else bias.data_ptr(),
        batch,
    )
    if key not in _EXACT:
        rows = weight.shape[0]
        cuts = sorted({aligned(rows * f, rows) for f in (0.25, 0.5, 0.75)} - {0, rows})
        generator = torch.Generator().manual_seed(0)
        exact = bool(cuts)
        with torch.no_grad():
            probe = torch.randn(batch, weight.shape[1], generator=generator).to(weight.dtype)
            whole = head_rows(weight, bias, probe, 0, rows)
            for cut in cuts:
                parts = [head_rows(weight, bias, probe, 0, cut), head_rows(weight, bias, probe, cut, rows)]
                exact = exact and torch.equal(torch.cat(parts, 1), whole)
        _EXACT[key] = exact
    return _EXACT[key]


def aligned(cut: float, rows: int) -> int:
    """``cut`` rounded down to a multiple of :data:`ROW_ALIGN` inside ``[0, rows)``, or ``rows``
    itself (the whole head) when ``cut >= rows``."""
    return rows if cut >= rows else max(0, int(cut) // ROW_ALIGN * ROW_ALIGN)


@dataclass
class HeadBalancer:
    """Running estimates of both sides' head speed and the worker's lag; ``cut()`` for the next step.

    The first step keeps the whole head on the caller (it measures ``c_p``); the worker's ``c_w``
    starts equal to it and is measured from the first shared step on."""

    rows: int  # V
    caller_row_s: float | None = None
    worker_row_s: float | None = None
    lag_s: float = 0.0
    message_s: float = 0.0  # request to worker start when the worker was already idle

    def cut(self) -> int:
        if self.caller_row_s is None:
            return self.rows
        worker = self.worker_row_s if self.worker_row_s is not None else self.caller_row_s
        cut = aligned((self.lag_s + worker * self.rows) / (self.caller_row_s + worker), self.rows)
        return self.rows if self.rows - cut < MIN_SHARE * self.rows else cut

    def observe_caller(self, rows: int, seconds: float) -> None:
        if rows > 0:
            self.caller_row_s = _smooth(self.caller_row_s, seconds / rows)

    def observe_worker(self, rows: int, seconds: float, lag: float, busy: float) -> None:
        """A shared step: the worker took ``seconds`` for ``rows`` rows and started ``lag`` seconds after
        the request, ``busy`` of them still on the reasoner's step."""
        if rows > 0:
            self.worker_row_s = _smooth(self.worker_row_s, seconds / rows)
        self.message_s = _smooth(self.message_s, max(0.0, lag - busy))
        self.lag_s = _smooth(self.lag_s, max(0.0, lag))

    def observe_unshared(self, busy: float) -> None:
        """A step the caller did alone: the worker would have started ``busy`` seconds after the request
        (it was still on the reasoner's step; ≤ 0 when it was already idle), plus the message."""
        self.lag_s = _smooth(self.lag_s, max(0.0, busy) + self.message_s)


def _smooth(old: float | None, new: float) -> float:
    return new if old is None else (1 - SMOOTHING) * old + SMOOTHING * new
