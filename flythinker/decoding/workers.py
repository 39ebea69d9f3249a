"""The reasoner in a persistent worker process (CPU): the parent side (the worker's is ``_worker.py``).

:class:`Worker` starts ``flythinker.decoding._worker`` as its own Python program (so it works from
plain scripts without a ``__main__`` guard, ``python -c``, notebooks and the REPL), hands it the
reasoner once (its weights move to shared memory, no copy) and, per step, the token ids and the
latent through shared tensors, with one small request/reply over a socket pair. A worker that dies
is noticed at once (the socket closes): the call raises :class:`WorkerDied`, the worker is reaped and
its channel closed, and the next call starts a new one. Workers stop at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler

import torch

from ._worker import COMMAND, FAILED, OK, BufferShape, Op, SharedBuffers
from .head_split import HeadBalancer, head_rows, slices_are_exact
from .steps import GeneratorSide, ReasonerSide

_BOOT = (
    "import json, os, sys; sys.path[:] = json.loads(os.environ.pop('FLYTHINKER_WORKER_SYS_PATH')); "
    "from flythinker.decoding._worker import main; main(int(sys.argv[1]))"
)
START_TIMEOUT_S = 300.0  # importing torch + transformers on a loaded machine
_ADVICE = "use schedule='threads' (same tokens, no worker process) or schedule='sequential'"


WORKER_SPINCOUNT = "10000"


def worker_openmp_environment(environ) -> dict[str, str]:
    """OpenMP settings the worker starts with: idle threads spin briefly, then sleep.

    With libgomp's default (spin 300,000 rounds, then sleep) the worker's idle OpenMP threads took the
    generator's core (SmolLM2 pair, 2 cores, batch 1: decode steps of 65-80 ms instead of 61-62);
    ``OMP_WAIT_POLICY=PASSIVE`` fixed the steps but slowed the worker's 2-thread prefill (TTFT
    0.51-0.60 s instead of 0.45-0.50 s). ``GOMP_SPINCOUNT=10000`` keeps both. A user who sets
    ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` keeps their own value."""
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return {}
    return {"GOMP_SPINCOUNT": WORKER_SPINCOUNT}


class WorkerStartError(RuntimeError):
    """The reasoner worker process could not start (the message says why and what to do)."""


class WorkerDied(RuntimeError):
    """The reasoner worker process died during a call (it has been reaped; the next call starts anew)."""


class Worker:
    """One persistent worker process, serving one call at a time (any model); idle between calls."""

    def __init__(self, threads: int):
        import torch.multiprocessing  # noqa: F401  (registers torch's shared-memory pickling)

        if os.name != "posix":
            raise WorkerStartError(f"the processes schedule needs a POSIX system, not {os.name}; {_ADVICE}")
        if not sys.executable:
            raise WorkerStartError(
                f"no Python executable to start the reasoner worker (sys.executable is empty); {_ADVICE}"
            )
        self.threads, self.pending, self.busy = threads, 0, False
        self.buffers: SharedBuffers | None = None
        self.side_key: tuple | None = None
        self.side_ref = None
        self.head_key: tuple | None = None
        self.head_ref = None
        self.log = tempfile.TemporaryFile()  # the worker's stdout/stderr, quoted when it fails
        ours, theirs = socket.socketpair()
        env = dict(os.environ, FLYTHINKER_WORKER_SYS_PATH=json.dumps(sys.path))
        env.update(worker_openmp_environment(os.environ))
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=self.log,
                env=env,
            )
        except OSError as error:
            ours.close()
            raise WorkerStartError(
                f"could not start the reasoner worker process ({sys.executable}): {error}; {_ADVICE}"
            ) from error
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        try:
            self.conn.send_bytes(pickle.dumps({"authkey": bytes(_authkey()), "threads": threads}))
            if not self.conn.poll(START_TIMEOUT_S):
                raise TimeoutError(f"no answer within {START_TIMEOUT_S:.0f} s")
            if self.conn.recv_bytes() != OK:
                raise RuntimeError("unexpected answer")
        except (OSError, EOFError, RuntimeError) as error:
            self.close()
            raise WorkerStartError(
                f"the reasoner worker process did not start ({self._exit_text()}); {_ADVICE}{self._log_tail()}"
            ) from error

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return not self.conn.closed and self.process.poll() is None

    # -------------------------------------------------------------------------------- requests
    def request(
        self, op: Op, batch: int = 0, length: int = 0, threads: int = 0, payload=None, wait: bool = True
    ) -> None:
        data = None if payload is None else bytes(ForkingPickler.dumps(payload))  # fails here, not half-sent
        try:
            self.conn.send_bytes(COMMAND.pack(op, batch, length, threads))
            if data is not None:
                self.conn.send_bytes(data)
        except OSError as error:
            self._died(error)
        self.pending += 1
        if wait:
            self.reply()

    def reply(self) -> None:
        """Wait for the answer to the oldest request; a failure in the worker raises its traceback."""
        try:
            answer = self.conn.recv_bytes()
        except (EOFError, OSError) as error:
            self._died(error)
        self.pending -= 1
        if answer[:1] != OK:
            text = answer[1:].decode(errors="replace") if answer[:1] == FAILED else repr(answer)
            raise RuntimeError("reasoner worker process failed:\n" + text)

    # -------------------------------------------------------------------------------- ending
    def close(self, timeout: float = 2.0) -> None:
        """Close the channel (the worker then exits on its own), reap it, kill it if it does not exit."""
        if self in _WORKERS:
            _WORKERS.remove(self)
        self.pending, self.busy = 0, False
        with contextlib.suppress(OSError):
            self.conn.close()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _died(self, cause: BaseException):
        self.close(timeout=2.0)
        raise WorkerDied(
            f"the reasoner worker process (pid {self.pid}) died ({self._exit_text()}). This call was "
            f"stopped and the worker reaped; the next call starts a new one. If it keeps dying (e.g. out "
            f"of memory), {_ADVICE}{self._log_tail()}"
        ) from cause

    def _exit_text(self) -> str:
        code = self.process.poll()
        if code is None:
            return "still running"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by signal {-code}, {signal.Signals(-code).name}"
        return f"exit code {code}"

    def _log_tail(self, lines: int = 12) -> str:
        with contextlib.suppress(OSError, ValueError):
            self.log.seek(0)
            tail = self.log.read().decode(errors="replace").strip().splitlines()[-lines:]
            if tail:
                return "\nIts output ended with:\n" + "\n".join(tail)
        return ""


def _authkey() -> bytes:
    import multiprocessing

    return multiprocessing.current_process().authkey


_WORKERS: list[Worker] = []  # live workers; a busy one serves one call (concurrent calls get their own)
_REGISTRY_LOCK = threading.Lock()


def start_worker(threads: int, acquire: bool = False) -> Worker:
    """An idle live worker for ``threads`` reasoner threads, started if there is none (raises
    :class:`WorkerStartError`); ``acquire`` marks it busy for one call (see :func:`release_worker`)."""
    with _REGISTRY_LOCK:
        for worker in [w for w in _WORKERS if not w.alive()]:
            worker.close()
        worker = next((w for w in _WORKERS if w.threads == threads and not w.busy), None)
        if worker is None:
            worker = Worker(threads)
            _WORKERS.append(worker)
        worker.busy = acquire
        return worker


def release_worker(worker: Worker) -> None:
    worker.busy = False


def shutdown_workers() -> None:
    """Stop the persistent reasoner worker processes (they also stop at interpreter exit)."""
    while _WORKERS:
        _WORKERS[-1].close()


def worker_pids() -> list[int]:
    """Process ids of the running reasoner workers."""
    return [worker.pid for worker in _WORKERS]


def _forget_workers_after_fork() -> None:
    """A forked child must not talk to its parent's workers: drop its copies of their channels."""
    global _REGISTRY_LOCK
    for worker in _WORKERS:
        with contextlib.suppress(OSError):
            worker.conn.close()
    _WORKERS.clear()
    _REGISTRY_LOCK = threading.Lock()


atexit.register(shutdown_workers)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers_after_fork)


def _side_key(side: ReasonerSide) -> tuple:
    """Identity of the weights and buffers a worker holds (shared: in-place updates reach it); a new
    model, dtype or device means a resend."""
    return _key(_tensors(side))


def _key(tensors) -> tuple:
    return tuple((t.data_ptr(), t.dtype, tuple(t.shape)) for t in tensors)


def _tensors(side: ReasonerSide) -> list[torch.Tensor]:
    return [*side.parameters(), *(b for b in side.buffers() if b is not None)]


class ProcessRunner:
    """R in a persistent worker process; token ids and latents cross through shared memory.

    ``threads`` = (generator, reasoner). Whoever runs alone gets every thread of the call: the worker
    for the first launch (the generator waits for its states), the generator for the prompt's last
    chunk (``generator_alone``: no reasoner launch in flight). Whenever both run, they split the
    threads. With the whole prompt as one chunk (the default for short prompts) each side prefills
    alone with every core.

    ``head`` = the generator's (LM-head weight, bias): the worker then computes a balanced share of the
    head's rows once its reasoner step is done (:mod:`~flythinker.decoding.head_split`; the logits are
    the whole head's, bit for bit). None: the generator keeps its whole head.
    """

    def __init__(
        self,
        out_device: torch.device,
        threads: tuple[int, int],
        static_cache: bool = True,
        head: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ):
        if torch.device(out_device).type != "cpu":
            raise ValueError("the processes schedule runs on CPU tensors only")
        self.threads, self.static_cache = threads, static_cache
        self.head = head
        self.worker: Worker | None = None
        self.head_share = 0.0  # of all head rows of the call's decode steps, the worker's fraction
        self._rows_total = self._rows_worker = 0

    def setup(self, side: ReasonerSide, attention_mask: torch.Tensor, max_len: int, chunk: int) -> None:
        if next(side.parameters()).device.type != "cpu":
            raise ValueError("the processes schedule needs the reasoner on CPU")
        self._saved_threads, self._launches = torch.get_num_threads(), 0
        torch.set_num_threads(sum(self.threads))
        worker = self.worker = start_worker(self.threads[1], acquire=True)
        batch = attention_mask.shape[0]
        dtype = next(side.parameters()).dtype
        width = side.width
        head_shape = (0, 0, torch.float32)
        if self.head is not None:
            weight = self.head[0]
            head_shape = (weight.shape[1], weight.shape[0], weight.dtype)
            self.balancer = HeadBalancer(weight.shape[0])
            self._rows_total = self._rows_worker = 0
        shape = BufferShape(batch, chunk, max_len, width, dtype, head_shape)
        send_buffers = None
        if worker.buffers is None or not worker.buffers.fits(shape):
            worker.buffers = send_buffers = SharedBuffers.allocate(shape)
        self.buffers = worker.buffers
        self.buffers.mask[:batch, :max_len].copy_(attention_mask)
        key = _side_key(side)
        held = worker.side_ref is not None and worker.side_ref() is side.reasoner and worker.side_key == key
        send_side = None if held else side
        send_head, head_key = None, None
        if self.head is not None:
            head_key = _key(t for t in self.head if t is not None)
            ref = worker.head_ref
            if not (ref is not None and ref() is self.head[0] and worker.head_key == head_key):
                send_head = self.head
        for tensor in [
            *(_tensors(side) if send_side is not None else ()),
            *(t for t in send_head or () if t is not None),
        ]:
            tensor.data.share_memory_()  # in place: the caller's model now lives in shared memory
        if send_side is not None:
            worker.side_key, worker.side_ref = None, None  # until the worker confirms
        if send_head is not None:
            worker.head_key, worker.head_ref = None, None
        worker.request(
            Op.SETUP, batch, max_len, payload=(send_side, send_buffers, self.static_cache, send_head)
        )
        if send_side is not None:
            worker.side_key, worker.side_ref = key, weakref.ref(side.reasoner)
        if send_head is not None:
            worker.head_key, worker.head_ref = head_key, weakref.ref(send_head[0])

    def start(self, ids: torch.Tensor, positions: torch.Tensor) -> None:
        batch, length = ids.shape
        self.buffers.ids[:batch, :length].copy_(ids)
        self.buffers.pos[:batch, :length].copy_(positions)
        self._shape = (batch, length)
        if self._launches >= 1 and torch.get_num_threads() != self.threads[0]:  # G runs beside R
            torch.set_num_threads(self.threads[0])
        threads = sum(self.threads) if self._launches == 0 else self.threads[1]
        self._launches += 1
        self._answered, self._unshared_at = False, None
        self.worker.request(Op.FORWARD, batch, length, threads, wait=False)

    def logits(self, generator: GeneratorSide, last_hidden: torch.Tensor) -> torch.Tensor:
        """G's logits [b, V] for the decode step in flight, the head's rows [cut, V) from the worker."""
        if self.head is None:
            return generator.logits(last_hidden)
        weight, bias = self.head
        batch, rows = last_hidden.shape[0], weight.shape[0]
        cut = self.balancer.cut() if slices_are_exact(weight, bias, batch) else rows
        requested = time.monotonic()
        if cut < rows:
            self.buffers.final[:batch].copy_(last_hidden)
            self.worker.request(Op.HEAD, batch, cut, wait=False)
        tick = time.monotonic()
        own = head_rows(weight, bias, last_hidden, 0, cut)
        self.balancer.observe_caller(cut, time.monotonic() - tick)
        self._rows_total += rows
        if cut == rows:
            self._unshared_at = requested  # the worker's lag is read once its step is answered
            return generator.finish_logits(own)
        self._collect_forward()
        self.worker.reply()
        clock = self.buffers.clock.tolist()
        self.balancer.observe_worker(
            rows - cut, clock[2] - clock[1], clock[1] - requested, clock[0] - requested
        )
        self._rows_worker += rows - cut
        return generator.finish_logits(torch.cat([own, self.buffers.logits[:batch, : rows - cut]], 1))

    def _collect_forward(self) -> None:
        if not self._answered:
            self.worker.reply()
            self._answered = True

    def finish(self) -> torch.Tensor:
        self._collect_forward()
        if self._unshared_at is not None:
            self.balancer.observe_unshared(float(self.buffers.clock[0]) - self._unshared_at)
        batch, length = self._shape
        return self.buffers.out[:batch, :length].clone()  # the next start() overwrites the buffer

    def generator_alone(self) -> None:
        if self._launches >= 1:  # the worker is idle until the next start(): G takes every thread
            torch.set_num_threads(sum(self.threads))

    def select(self, rows: torch.Tensor) -> None:
        self.buffers.rows[: rows.numel()].copy_(rows)
        self.worker.request(Op.SELECT, rows.numel())

    def end(self) -> None:
        """Release the call's cache in the worker; first collect a forward left in flight (after an
        error or an abandoned stream), so requests and replies stay paired — or drop the worker."""
        worker, self.worker = self.worker, None
        if self._rows_total:
            self.head_share = self._rows_worker / self._rows_total
        try:
            while worker is not None and worker.pending and worker.alive():
                with contextlib.suppress(RuntimeError):  # a failed forward is still an answer
                    worker.reply()
            if worker is not None and worker.alive():
                worker.request(Op.END)
        except WorkerDied:
            pass  # already reaped and reported by the call; the next call starts a new worker
        except Exception:
            worker.close()  # the channel cannot be trusted any more; the next call starts a new worker
        except BaseException:
            worker.close()  # interrupted while draining (Ctrl-C)
            raise
        finally:
            if worker is not None:
                release_worker(worker)
            if hasattr(self, "_saved_threads"):
                torch.set_num_threads(self._saved_threads)
