"""The reasoner worker process's own program (the parent side is :mod:`flythinker.decoding.workers`).

It is started as ``python -c "…; from flythinker.decoding._worker import main; main(FD)"`` — its own
program, never through multiprocessing's ``spawn``, which re-runs the caller's ``__main__`` and so
kills plain scripts without an ``if __name__ == "__main__":`` guard. ``FD`` is one end of a socket pair.

Protocol: the parent sends one :data:`COMMAND` header per request and the worker answers each with
one reply, ``OK`` or ``FAILED`` + the traceback::

    hello (pickled {"authkey", "threads"})     the first message; answered OK
    SETUP   batch, max_len  + pickled (side | None, buffers | None, static, head | None)
                            new call: cache, mask copy; head = the generator's (LM-head weight, bias)
    FORWARD batch, length, threads   h = R(ids[:b, :L], pos[:b, :L]) written to out[:b, :L]
    HEAD    batch, cut      G's raw head rows [cut, V) of final[:b] written to logits[:b, :V - cut]
    SELECT  batch           keep rows[:b] of the cache and the mask
    END                     drop the call's cache

``clock`` (shared, ``time.monotonic()``, comparable across processes) records when the last FORWARD
ended and when the last HEAD started and ended: the caller balances the head's rows by them
(:mod:`flythinker.decoding.head_split`).

Tensors cross in shared memory (torch's file-descriptor sharing; the authkey lets the worker fetch
the descriptors from the parent). The worker exits when the parent closes its end (or dies).
"""

from __future__ import annotations

import enum
import os
import pickle
import signal
import struct
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection

import torch


class Op(enum.IntEnum):
    SETUP = 1
    FORWARD = 2
    SELECT = 3
    END = 4
    HEAD = 5


# (op, batch rows, length: chunk tokens for FORWARD / max_len for SETUP / cut for HEAD,
#  threads for FORWARD: 0 = keep)
COMMAND = struct.Struct("<4q")
OK, FAILED = b"\0", b"\1"


@dataclass(frozen=True)
class BufferShape:
    """What one call needs of the exchange tensors: ``head`` = (d_G, V, dtype) of the generator's LM
    head the worker shares, (0, 0, …) when it shares none."""

    batch: int
    chunk: int
    max_len: int
    width: int
    dtype: torch.dtype
    head: tuple[int, int, torch.dtype] = (0, 0, torch.float32)


@dataclass
class SharedBuffers:
    """Shared-memory exchange tensors, sized to a capacity and reused by every call that fits."""

    ids: torch.Tensor  # [B, L] long
    pos: torch.Tensor  # [B, L] long
    out: torch.Tensor  # [B, L, d] the reasoner's states
    rows: torch.Tensor  # [B] long, rows kept by SELECT
    mask: torch.Tensor  # [B, max_len] long
    final: torch.Tensor  # [B, d_G] the generator's final hidden state (HEAD's input; [B, 0] without)
    logits: torch.Tensor  # [B, V] the worker's head rows (HEAD's output; [B, 0] without)
    clock: torch.Tensor  # [3] float64: FORWARD end, HEAD start, HEAD end (time.monotonic())

    @classmethod
    def allocate(cls, shape: BufferShape) -> SharedBuffers:
        def shared(*size, dtype=torch.long):
            return torch.zeros(size, dtype=dtype).share_memory_()

        batch, chunk = shape.batch, shape.chunk
        head_width, vocab, head_dtype = shape.head
        return cls(
            shared(batch, chunk),
            shared(batch, chunk),
            shared(batch, chunk, shape.width, dtype=shape.dtype),
            shared(batch),
            shared(batch, shape.max_len),
            shared(batch, head_width, dtype=head_dtype),
            shared(batch, vocab, dtype=head_dtype),
            shared(3, dtype=torch.float64),
        )

    def fits(self, shape: BufferShape) -> bool:
        b, length, d = self.out.shape
        vocab = shape.head[1]
        same_head = (self.final.shape[1], self.logits.shape[1], self.logits.dtype) == shape.head
        return (
            shape.batch <= b
            and shape.chunk <= length
            and shape.max_len <= self.mask.shape[1]
            and (d, self.out.dtype) == (shape.width, shape.dtype)
            and (vocab == 0 or same_head)  # a call that shares no head uses buffers with room for one
        )


def serve(conn: Connection) -> None:
    """Answer requests until the parent closes the connection."""
    from .head_split import head_rows
    from .steps import new_decode_cache, select_cache_rows

    side = buffers = cache = mask = head = None
    with torch.no_grad():
        while True:
            try:
                op, batch, length, threads = COMMAND.unpack(conn.recv_bytes())
            except EOFError:
                return
            try:
                if op == Op.SETUP:
                    new_side, new_buffers, static, new_head = pickle.loads(conn.recv_bytes())
                    side = new_side if new_side is not None else side
                    head = new_head if new_head is not None else head
                    buffers = new_buffers if new_buffers is not None else buffers
                    cache = new_decode_cache(side.config, length, static)
                    mask = buffers.mask[:batch, :length].clone()
                elif op == Op.FORWARD:
                    if threads and threads != torch.get_num_threads():
                        torch.set_num_threads(threads)
                    hidden = side(buffers.ids[:batch, :length], mask, buffers.pos[:batch, :length], cache)
                    buffers.out[:batch, :length].copy_(hidden)
                    buffers.clock[0] = time.monotonic()
                elif op == Op.HEAD:
                    buffers.clock[1] = time.monotonic()
                    weight, bias = head
                    rows = head_rows(weight, bias, buffers.final[:batch], length, weight.shape[0])
                    buffers.logits[:batch, : rows.shape[1]].copy_(rows)
                    buffers.clock[2] = time.monotonic()
                elif op == Op.SELECT:
                    rows = buffers.rows[:batch].clone()
                    select_cache_rows(cache, rows)
                    mask = mask.index_select(0, rows)
                elif op == Op.END:
                    cache = mask = None
                else:
                    raise ValueError(f"unknown worker command {op}")
                reply = OK
            except Exception:
                reply = FAILED + traceback.format_exc().encode()
            conn.send_bytes(reply)


def main(fd: int) -> None:
    import multiprocessing

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C interrupts the caller, which then ends the call
    conn = Connection(fd)
    hello = pickle.loads(conn.recv_bytes())
    multiprocessing.current_process().authkey = hello["authkey"]
    torch.set_num_threads(hello["threads"])
    from flythinker.kernels.host_memory import keep_freed_host_memory

    keep_freed_host_memory()  # this process only decodes: reuse freed blocks, no fresh page per step
    conn.send_bytes(OK)
    serve(conn)
    os._exit(0)  # nothing to flush or save: skip the interpreter's slow teardown
