"""Where the reasoner runs while the generator decodes: one small interface, four placements.

A runner owns the reasoner's static KV cache and exposes::

    setup(side, batch, max_len, chunk, attention_mask)   once per call (mask: [B, max_len])
    start(ids, positions)    launch R on [B, L] tokens (returns at once where the placement allows)
    finish() -> h            [B, L, d] states on the generator's device (waits for that launch)
    select(rows)             keep only these batch rows (after finish)
    end()                    release per-call resources

Placements:

* :class:`DeviceRunner` — R runs where its weights are. Same device, no stream: the sequential
  reference. A second CUDA stream with an event: R overlaps G on one GPU with no host sync. Another
  device: kernels launch asynchronously and the latent is copied back with ``non_blocking``.
* :class:`ThreadRunner` — a worker thread (CPU); torch releases the GIL inside ops.
* :class:`ProcessRunner` — a persistent worker process (CPU) that receives the reasoner once (its
  weights move to shared memory, no copy), and per step exchanges the token ids and the latent
  through shared tensors, woken by two semaphores. ``torch.set_num_threads`` is set per process.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import threading
import traceback
import weakref

import torch

from .steps import ReasonerSide, new_static_cache, select_cache_rows


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


class DeviceRunner:
    """R on its own device, optionally on a side CUDA stream (see the module docstring)."""

    def __init__(self, out_device: torch.device, use_stream: bool = False, step_fn=None):
        self.out_device = torch.device(out_device)
        self.use_stream = use_stream
        self.step_fn = step_fn  # optional compiled one-token forward (same signature as ReasonerSide)
        self.stream = self.event = None
        self._pending = None

    def setup(self, side: ReasonerSide, batch: int, max_len: int, chunk: int, attention_mask: torch.Tensor):
        self.side = side
        self.device = _device_of(side)
        self.cache = new_static_cache(side.config, max_len)
        self.mask = attention_mask.to(self.device)
        if self.use_stream:
            if self.device.type != "cuda":
                raise ValueError(f"the cuda-streams schedule needs the reasoner on a CUDA device, got {self.device}")
            self.stream = torch.cuda.Stream(device=self.device)
            self.event = torch.cuda.Event()

    def start(self, ids: torch.Tensor, positions: torch.Tensor) -> None:
        forward = self.step_fn if (self.step_fn is not None and ids.shape[1] == 1) else self.side
        if self.stream is None:
            ids = ids.to(self.device, non_blocking=True)
            positions = positions.to(self.device, non_blocking=True)
            self._pending = forward(ids, self.mask, positions, self.cache)
            return
        self.stream.wait_stream(torch.cuda.current_stream(ids.device))  # the token was sampled there
        with torch.cuda.stream(self.stream):
            ids = ids.to(self.device, non_blocking=True)
            positions = positions.to(self.device, non_blocking=True)
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

    def select(self, rows: torch.Tensor) -> None:
        select_cache_rows(self.cache, rows)
        self.mask = self.mask.index_select(0, rows.to(self.device))

    def end(self) -> None:
        self.cache = self.side = self.mask = None


class ThreadRunner:
    """A :class:`DeviceRunner` driven by a worker thread (CPU concurrency under the GIL)."""

    def __init__(self, out_device: torch.device):
        self.inner = DeviceRunner(out_device)
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

    def setup(self, side, batch, max_len, chunk, attention_mask) -> None:
        self.inner.setup(side, batch, max_len, chunk, attention_mask)
        self._thread = threading.Thread(target=self._loop, name="flythinker-reasoner", daemon=True)
        self._thread.start()

    def start(self, ids, positions) -> None:
        self._jobs.put((ids, positions))

    def finish(self) -> torch.Tensor:
        result = self._results.get()
        if isinstance(result, BaseException):
            raise RuntimeError("reasoner worker thread failed") from result
        return result

    def select(self, rows) -> None:
        self.inner.select(rows)

    def end(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
        self.inner.end()


# ------------------------------------------------------------------------------------------ processes
_EXIT, _SETUP, _FORWARD, _SELECT, _END = 0, 1, 2, 3, 4
_OP, _BATCH, _LENGTH, _STATUS = 0, 1, 2, 7


def _process_main(ctrl, go, done, setups, errors, threads: int) -> None:
    """Worker process loop: wait for ``go``, do ``ctrl[_OP]`` on the shared buffers, post ``done``."""
    torch.set_num_threads(threads)
    side = cache = buffers = mask = None
    with torch.no_grad():
        while True:
            go.acquire()
            op = int(ctrl[_OP])
            try:
                if op == _EXIT:
                    ctrl[_STATUS] = 0
                    done.release()
                    return
                if op == _SETUP:
                    new_side, buffers, max_len = setups.get()
                    side = new_side if new_side is not None else side
                    cache = new_static_cache(side.config, max_len)
                    mask = buffers["mask"][: int(ctrl[_BATCH])].clone()
                elif op == _FORWARD:
                    batch, length = int(ctrl[_BATCH]), int(ctrl[_LENGTH])
                    hidden = side(buffers["ids"][:batch, :length], mask, buffers["pos"][:batch, :length], cache)
                    buffers["out"][:batch, :length].copy_(hidden)
                elif op == _SELECT:
                    rows = buffers["rows"][: int(ctrl[_BATCH])].clone()
                    select_cache_rows(cache, rows)
                    mask = mask.index_select(0, rows)
                elif op == _END:
                    cache = mask = None
                ctrl[_STATUS] = 0
            except BaseException:
                ctrl[_STATUS] = 1
                errors.put(traceback.format_exc())
            done.release()


class _WorkerProcess:
    """A persistent spawned process (one per thread count), shared by every call and model."""

    def __init__(self, threads: int):
        import torch.multiprocessing as mp

        context = mp.get_context("spawn")
        self.ctrl = torch.zeros(8, dtype=torch.long).share_memory_()
        self.go, self.done = context.Semaphore(0), context.Semaphore(0)
        self.setups, self.errors = context.Queue(), context.Queue()
        self.process = context.Process(
            target=_process_main,
            args=(self.ctrl, self.go, self.done, self.setups, self.errors, threads),
            name="flythinker-reasoner",
            daemon=True,
        )
        self.process.start()
        self.side_key: tuple | None = None
        self.side_ref = None

    def command(self, op: int, batch: int = 0, length: int = 0, wait: bool = True) -> None:
        self.ctrl[_OP], self.ctrl[_BATCH], self.ctrl[_LENGTH] = op, batch, length
        self.go.release()
        if wait:
            self.wait()

    def wait(self) -> None:
        while not self.done.acquire(timeout=1.0):
            if not self.process.is_alive():
                raise RuntimeError(f"reasoner worker process died (exit code {self.process.exitcode})")
        if int(self.ctrl[_STATUS]) != 0:
            raise RuntimeError("reasoner worker process failed:\n" + self.errors.get(timeout=10))

    def close(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(Exception):
                self.command(_EXIT)
            self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()


_WORKERS: dict[int, _WorkerProcess] = {}


def _shutdown_workers() -> None:
    while _WORKERS:
        _WORKERS.popitem()[1].close()


atexit.register(_shutdown_workers)


def shutdown_workers() -> None:
    """Stop the persistent reasoner worker processes (they also stop at interpreter exit)."""
    _shutdown_workers()


def _side_key(side: ReasonerSide) -> tuple:
    """Identity of the weights a worker holds: a new model, dtype or device means a resend."""
    return tuple((p.data_ptr(), p.dtype, tuple(p.shape)) for p in side.parameters())


class ProcessRunner:
    """R in a persistent worker process; token ids and latents cross through shared memory."""

    def __init__(self, out_device: torch.device, threads: int):
        if torch.device(out_device).type != "cpu":
            raise ValueError("the processes schedule runs on CPU tensors only")
        self.threads = threads
        self.worker: _WorkerProcess | None = None
        self._in_flight = False

    def setup(self, side, batch, max_len, chunk, attention_mask) -> None:
        if _device_of(side).type != "cpu":
            raise ValueError("the processes schedule needs the reasoner on CPU")
        worker = _WORKERS.get(self.threads)
        if worker is None or not worker.process.is_alive():
            worker = _WORKERS[self.threads] = _WorkerProcess(self.threads)
        self.worker = worker
        dtype = next(side.parameters()).dtype
        width = side.projection.out_features if side.projection is not None else side.config.hidden_size
        self.buffers = {
            "ids": torch.zeros((batch, chunk), dtype=torch.long).share_memory_(),
            "pos": torch.zeros((batch, chunk), dtype=torch.long).share_memory_(),
            "mask": attention_mask.to(torch.long).clone().share_memory_(),
            "out": torch.zeros((batch, chunk, width), dtype=dtype).share_memory_(),
            "rows": torch.zeros(batch, dtype=torch.long).share_memory_(),
        }
        key = _side_key(side)
        alive = worker.side_ref is not None and worker.side_ref() is side.reasoner
        send = None if (alive and worker.side_key == key) else side
        if send is not None:
            for parameter in side.parameters():  # in place: the caller's model now lives in shared memory
                parameter.data.share_memory_()
            worker.side_key, worker.side_ref = key, weakref.ref(side.reasoner)
        worker.setups.put((send, self.buffers, max_len))
        worker.command(_SETUP, batch=batch)
        self.batch = batch

    def start(self, ids, positions) -> None:
        batch, length = ids.shape
        self.buffers["ids"][:batch, :length].copy_(ids)
        self.buffers["pos"][:batch, :length].copy_(positions)
        self._shape = (batch, length)
        self.worker.command(_FORWARD, batch=batch, length=length, wait=False)
        self._in_flight = True

    def finish(self) -> torch.Tensor:
        self._in_flight = False
        self.worker.wait()
        batch, length = self._shape
        return self.buffers["out"][:batch, :length].clone()

    def select(self, rows) -> None:
        self.buffers["rows"][: rows.numel()].copy_(rows)
        self.worker.command(_SELECT, batch=rows.numel())

    def end(self) -> None:
        """Release the call's cache in the worker; first collect a forward left in flight (after an
        error or an abandoned stream), so that commands and replies stay paired."""
        if self.worker is not None and self.worker.process.is_alive():
            if self._in_flight:
                self._in_flight = False
                with contextlib.suppress(RuntimeError):
                    self.worker.wait()
            self.worker.command(_END)
        self.worker = None


def default_cpu_threads() -> int:
    """Cores available to this process (``sched_getaffinity`` where supported)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1
