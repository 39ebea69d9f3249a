"""The reasoner worker process's own program (the parent side is :mod:`flythinker.decoding.workers`).

It is started as ``python -c "…; from flythinker.decoding._worker import main; main(FD)"`` — its own
program, never through multiprocessing's ``spawn``, which re-runs the caller's ``__main__`` and so
kills plain scripts without an ``if __name__ == "__main__":`` guard. ``FD`` is one end of a socket pair.

Protocol: the parent sends one :data:`COMMAND` header per request and the worker answers each with
one reply, ``OK`` or ``FAILED`` + the traceback::

    hello (pickled {"authkey", "threads"})     the first message; answered OK
    SETUP   batch, max_len  + pickled (side | None, buffers | None, static)   new call: cache, mask copy
    FORWARD batch, length, threads   h = R(ids[:b, :L], pos[:b, :L]) written to out[:b, :L]
    SELECT  batch           keep rows[:b] of the cache and the mask
    END                     drop the call's cache

Tensors cross in shared memory (torch's file-descriptor sharing; the authkey lets the worker fetch
the descriptors from the parent). The worker exits when the parent closes its end (or dies).
"""

from __future__ import annotations

import enum
import os
import pickle
import signal
import struct
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection

import torch


class Op(enum.IntEnum):
    SETUP = 1
    FORWARD = 2
    SELECT = 3
    END = 4


# (op, batch rows, length: chunk tokens for FORWARD / max_len for SETUP, threads for FORWARD: 0 = keep)
COMMAND = struct.Struct("<4q")
OK, FAILED = b"\0", b"\1"


@dataclass
class SharedBuffers:
    """Shared-memory exchange tensors, sized to a capacity and reused by every call that fits."""

    ids: torch.Tensor  # [B, L] long
    pos: torch.Tensor  # [B, L] long
    out: torch.Tensor  # [B, L, d] the reasoner's states
    rows: torch.Tensor  # [B] long, rows kept by SELECT
    mask: torch.Tensor  # [B, max_len] long

    @classmethod
    def allocate(cls, batch: int, chunk: int, max_len: int, width: int, dtype: torch.dtype) -> SharedBuffers:
        def shared(*shape, dtype=torch.long):
            return torch.zeros(shape, dtype=dtype).share_memory_()

        return cls(
            shared(batch, chunk),
            shared(batch, chunk),
            shared(batch, chunk, width, dtype=dtype),
            shared(batch),
            shared(batch, max_len),
        )

    def fits(self, batch: int, chunk: int, max_len: int, width: int, dtype: torch.dtype) -> bool:
        b, length, d = self.out.shape
        return (
            batch <= b
            and chunk <= length
            and max_len <= self.mask.shape[1]
            and (d, self.out.dtype) == (width, dtype)
        )


def serve(conn: Connection) -> None:
    """Answer requests until the parent closes the connection."""
    from .steps import new_decode_cache, select_cache_rows

    side = buffers = cache = mask = None
    with torch.no_grad():
        while True:
            try:
                op, batch, length, threads = COMMAND.unpack(conn.recv_bytes())
            except EOFError:
                return
            try:
                if op == Op.SETUP:
                    new_side, new_buffers, static = pickle.loads(conn.recv_bytes())
                    side = new_side if new_side is not None else side
                    buffers = new_buffers if new_buffers is not None else buffers
                    cache = new_decode_cache(side.config, length, static)
                    mask = buffers.mask[:batch, :length].clone()
                elif op == Op.FORWARD:
                    if threads and threads != torch.get_num_threads():
                        torch.set_num_threads(threads)
                    hidden = side(buffers.ids[:batch, :length], mask, buffers.pos[:batch, :length], cache)
                    buffers.out[:batch, :length].copy_(hidden)
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
