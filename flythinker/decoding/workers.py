"""The reasoner in a persistent worker process (CPU): the parent side (the worker's is ``_worker.py``).

:class:`Worker` starts ``flythinker.decoding._worker`` as its own Python program (so it works from
plain scripts without a ``__main__`` guard, ``python -c``, notebooks and the REPL), hands it the
reasoner once (its weights move to shared memory, no copy) and, per step, the token ids and the
latent through shared tensors, with one small request/reply over a socket pair. A worker that dies
is noticed at once (the socket closes): the call raises :class:`WorkerDied`, the worker is reaped and
its channel closed, and the next call starts a new one. Workers stop at interpreter exit. The
``processes`` runner that drives a worker through a call is ``process_runner.py``.
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
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler

from ._worker import COMMAND, FAILED, OK, Op, SharedBuffers

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
