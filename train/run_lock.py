"""An exclusive lock on a run directory, held for the whole run.

Two trainings launched into one ``--output-dir`` would each exit 0 while one silently replaced the other's
model, metrics and provenance. :class:`RunLock` takes an ``fcntl.flock`` on ``<dir>/.run.lock`` (released
by the kernel when the process dies, so a killed run never blocks the next) and writes its owner
(pid, host, start time) into it. A second run is refused with the owner's name; a lock file left by a dead
process is reported as stale (named in a warning) and taken over.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"


class RunDirectoryLockedError(RuntimeError):
    """Another live process holds the run directory."""


class RunLock:
    """``with RunLock(directory, what="--output-dir"):`` holds ``directory`` exclusively (creating it)."""

    def __init__(self, directory: Path, what: str = "--output-dir"):
        self.directory = Path(directory)
        self.what = what
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise RunDirectoryLockedError(
                    f"{self.what} {self.directory}: another run ({_describe(owner)}) is writing it; wait for it "
                    "to finish or choose another directory"
                ) from None
            try:  # the holder may have removed the file between our open and flock: lock the current one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_owner(fd)
        if previous:  # a holder that released normally removed the file: this one's process died
            logger.warning(
                "%s %s: taking over the stale lock %s of %s (that process is no longer running)",
                self.what, self.directory, self.path, _describe(previous),
            )  # fmt: skip
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: nobody can take it in between
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_owner(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        owner = json.loads(data) if data else {}
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict) -> str:
    if not owner:
        return "owner unknown"
    return f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}"
