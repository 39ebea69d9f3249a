"""The ``processes`` schedule's runner: the reasoner in a persistent worker process (CPU).

:class:`ProcessRunner` speaks the runner protocol (``runners.py``) over one
:class:`~flythinker.decoding.workers.Worker` from the pool in ``workers.py``: the call's ids, positions
and mask go through shared buffers, R's states come back the same way, and, when given the
generator's LM head, the worker computes a balanced share of its rows each decode step
(``head_split.py``).
"""

from __future__ import annotations

import contextlib
import time
import weakref

import torch

from ._worker import BufferShape, Op, SharedBuffers
from .head_split import HeadBalancer, head_rows, slices_are_exact
from .steps import GeneratorSide, ReasonerSide
from .workers import Worker, WorkerDied, release_worker, start_worker


def _side_key(side: ReasonerSide) -> tuple:
    """Identity of the weights and buffers a worker holds (shared: in-place updates reach it); a new
    model, dtype or device means a resend."""
    return _key(_tensors(side))


def _key(tensors) -> tuple:
    return tuple((t.data_ptr(), t.dtype, tuple(t.shape)) for t in tensors)


def _tensors(side: ReasonerSide) -> list[torch.Tensor]:
    return [*side.parameters(), *(b for b in side.buffers() if b is not None)]


def _holds(ref: weakref.ref | None, held_key: tuple | None, obj, key: tuple) -> bool:
    """Whether the worker already holds ``obj`` (the same live object, the same tensors)."""
    return ref is not None and ref() is obj and held_key == key


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
        shape = BufferShape(batch, chunk, max_len, width, dtype, head_shape)
        send_buffers = None
        if worker.buffers is None or not worker.buffers.fits(shape):
            worker.buffers = send_buffers = SharedBuffers.allocate(shape)
        self.buffers = worker.buffers
        self.buffers.mask[:batch, :max_len].copy_(attention_mask)
        key = _side_key(side)
        send_side = None if _holds(worker.side_ref, worker.side_key, side.reasoner, key) else side
        send_head, head_key = None, None
        if self.head is not None:
            head_key = _key(t for t in self.head if t is not None)
            if not _holds(worker.head_ref, worker.head_key, self.head[0], head_key):
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
