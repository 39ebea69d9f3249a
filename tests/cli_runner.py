"""Run ``flythinker <argv>`` in a child process a test can SIGKILL (used by tests/reliability).

Children come from a fork server: a clean interpreter that has imported the CLI once, so a child
starts without interpreter start-up cost and never inherits the test process's OpenMP thread pool
(forking a process whose OpenMP pool is running can crash the child with SIGSEGV).
"""

from __future__ import annotations

import multiprocessing
import os

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["tests.cli_runner", "flythinker.cli"])


def run_main(argv: list[str]) -> None:
    import threading

    from tqdm import tqdm
    from tqdm.auto import tqdm as auto_tqdm

    from flythinker.cli import main

    # tqdm's write lock is a multiprocessing lock shared with every other child of the server: a child
    # killed while holding it would block the next child's progress bar. Each child takes its own.
    for cls in (tqdm, auto_tqdm):
        cls.set_lock(threading.RLock())
    os._exit(main(argv))


def start(argv: list[str]) -> multiprocessing.Process:
    process = _CONTEXT.Process(target=run_main, args=(argv,))
    process.start()
    return process
