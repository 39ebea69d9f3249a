"""Where the reasoner runs while the generator decodes: one protocol, several placements.

A runner owns the reasoner's static KV cache for one call (:class:`ReasonerRunner`):

* :class:`DeviceRunner` — R runs where its weights are. Same device, no stream: the sequential
  reference. A second CUDA stream with an event: R overlaps G on one GPU with no host sync. Another
  device: kernels launch asynchronously and the latent is copied back with ``non_blocking``.
* :class:`ThreadRunner` — a worker thread (CPU); torch releases the GIL inside ops.
* :class:`~flythinker.decoding.process_runner.ProcessRunner` — a persistent worker process (CPU).

:func:`make_runner` picks one for a resolved schedule.
"""

from __future__ import annotations

import queue
import threading
import warnings
from typing import Protocol, runtime_checkable

import torch

from .settings import DecodingSettings
from .steps import GeneratorSide, ReasonerSide, new_decode_cache, select_cache_rows


@runtime_checkable
class ReasonerRunner(Protocol):
    """The reasoner's half of every decode step, placed somewhere."""

    def setup(self, side: ReasonerSide, attention_mask: torch.Tensor, max_len: int, chunk: int) -> None:
        """Once per call: the full ``[B, max_len]`` mask; ``chunk`` is the longest ``start`` length."""

    def start(self, ids: torch.Tensor, positions: torch.Tensor) -> None:
        """Launch R on ``[b, L]`` tokens at ``positions`` (returns at once where the placement allows)."""

    def finish(self) -> torch.Tensor:
        """Wait for the launch; its states ``[b, L, d]`` on the generator's device."""

    head_share: float  # the fraction of the generator's LM-head rows computed by the runner (0: none)

    def generator_alone(self) -> None:
        """Hint: the generator now runs with no reasoner launch in flight (until the next ``start``)."""

    def logits(self, generator: GeneratorSide, last_hidden: torch.Tensor) -> torch.Tensor:
        """G's logits of a decode step, between ``start`` and ``finish`` (a placement with idle
        cores may compute some of the head's rows; the values are the whole head's)."""

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (local indices), after ``finish``."""

    def end(self) -> None:
        """Release the call's resources (also after an error, with a launch possibly in flight)."""


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


class WholeHeadRunner:
    """Runners that leave the generator's whole LM head to the generator (no idle cores to share)."""

    head_share = 0.0

    def logits(self, generator: GeneratorSide, last_hidden: torch.Tensor) -> torch.Tensor:
        return generator.logits(last_hidden)


class DeviceRunner(WholeHeadRunner):
    """R on its own device, optionally on a side CUDA stream (see the module docstring)."""

    def __init__(
        self, out_device: torch.device, use_stream: bool = False, step_fn=None, static_cache: bool = True
    ):
        self.out_device = torch.device(out_device)
        self.static_cache = static_cache
        self.use_stream = use_stream
        self.step_fn = step_fn  # optional compiled one-token forward (same signature as ReasonerSide)
        self.stream = self.event = self._pending = None

    def setup(self, side: ReasonerSide, attention_mask: torch.Tensor, max_len: int, chunk: int) -> None:
        self.side, self.device = side, _device_of(side)
        self.cache = new_decode_cache(side.config, max_len, self.static_cache)
        self.mask = attention_mask.to(self.device)
        if self.use_stream:
            if self.device.type != "cuda":
                raise ValueError(
                    f"the cuda-streams schedule needs the reasoner on a CUDA device, got {self.device}"
                )
            self.stream, self.event = torch.cuda.Stream(device=self.device), torch.cuda.Event()

    def start(self, ids: torch.Tensor, positions: torch.Tensor) -> None:
        forward = self.step_fn if (self.step_fn is not None and ids.shape[1] == 1) else self.side
        if self.stream is None:
            ids, positions = (
                ids.to(self.device, non_blocking=True),
                positions.to(self.device, non_blocking=True),
            )
            self._pending = forward(ids, self.mask, positions, self.cache)
            return
        self.stream.wait_stream(torch.cuda.current_stream(ids.device))  # the token was sampled there
        with torch.cuda.stream(self.stream):
            ids, positions = (
                ids.to(self.device, non_blocking=True),
                positions.to(self.device, non_blocking=True),
            )
            ids.record_stream(self.stream)
            positions.record_stream(self.stream)
            self._pending = forward(ids, self.mask, positions, self.cache)
            self.event.record(self.stream)

    def finish(self) -> torch.Tensor:
        hidden, self._pending = self._pending, None
        if self.stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(self.event)  # device-side wait: no host synchronisation
            hidden.record_stream(current)
        return hidden.to(self.out_device, non_blocking=True)

    def generator_alone(self) -> None:
        pass  # nothing to hand over: R and G share the device's resources as they are

    def select(self, rows: torch.Tensor) -> None:
        select_cache_rows(self.cache, rows)
        self.mask = self.mask.index_select(0, rows.to(self.device))

    def end(self) -> None:
        self.cache = self.side = self.mask = self._pending = None


class ThreadRunner(WholeHeadRunner):
    """A :class:`DeviceRunner` driven by a worker thread (CPU concurrency under the GIL).

    ``torch.set_num_threads`` is process-wide: both threads use ``threads`` intra-op threads for the call.
    """

    def __init__(self, out_device: torch.device, threads: int, static_cache: bool = True):
        self.inner, self.threads = DeviceRunner(out_device, static_cache=static_cache), threads
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        with torch.no_grad():
            while (job := self._jobs.get()) is not None:
                try:
                    self.inner.start(*job)
                    self._results.put(self.inner.finish())
                except BaseException as error:  # handed to the caller's finish()
                    self._results.put(error)

    def setup(self, side: ReasonerSide, attention_mask: torch.Tensor, max_len: int, chunk: int) -> None:
        self._saved_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        self.inner.setup(side, attention_mask, max_len, chunk)
        self._thread = threading.Thread(target=self._loop, name="flythinker-reasoner", daemon=True)
        self._thread.start()

    def start(self, ids: torch.Tensor, positions: torch.Tensor) -> None:
        self._jobs.put((ids, positions))

    def finish(self) -> torch.Tensor:
        result = self._results.get()
        if isinstance(result, BaseException):
            raise RuntimeError("reasoner worker thread failed") from result
        return result

    def generator_alone(self) -> None:
        pass  # one thread count for the whole process: the split stays

    def select(self, rows: torch.Tensor) -> None:
        self.inner.select(rows)

    def end(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)  # after any job in flight: the thread finishes it, then stops
            self._thread.join()
            self._thread = None
            torch.set_num_threads(self._saved_threads)
        self.inner.end()


def make_runner(settings: DecodingSettings, model, requested: str) -> tuple[ReasonerRunner, DecodingSettings]:
    """The runner of ``settings.schedule`` (and the settings, changed if ``concurrent`` had to fall back)."""
    import dataclasses

    device = torch.device(settings.generator_device)
    schedule = settings.schedule
    if schedule == "processes":
        from .head_split import head_parameters
        from .process_runner import ProcessRunner
        from .workers import WorkerStartError, start_worker

        try:
            start_worker(settings.threads[1])
            head = head_parameters(model.generator.get_output_embeddings()) if settings.share_head else None
            return ProcessRunner(device, settings.threads, settings.static_cache, head), settings
        except WorkerStartError as error:
            if requested != "concurrent":
                raise
            warnings.warn(
                f"{error}; decoding with schedule='threads' instead (the same tokens)", stacklevel=4
            )
            settings = dataclasses.replace(settings, schedule="threads", share_head=False)
            schedule = "threads"
    if schedule == "threads":
        return ThreadRunner(device, settings.threads[1], settings.static_cache), settings
    step_fn = None
    if settings.compile is not None:
        step_fn = torch.compile(
            ReasonerSide(model.reasoner, model.fusion), mode=settings.compile, dynamic=False
        )
    runner = DeviceRunner(
        device, use_stream=schedule == "cuda-streams", step_fn=step_fn, static_cache=settings.static_cache
    )
    return runner, settings
