"""Shared fixtures for the reliability tests: the tiny fine-tuning workspace and a saved tiny FlyThinker."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from tests.train.conftest import workspace  # noqa: F401  (re-exported fixture)


@pytest.fixture(scope="session")
def tiny_model_dir(workspace):  # noqa: F811
    """A saved FlyThinker (tiny Qwen2 generator + Llama reasoner) with the workspace's ChatML tokenizer."""
    from flythinker import FlyThinkerForCausalLM

    root = workspace["root"]
    target = root / "flythinker_model"
    if not target.exists():
        model = FlyThinkerForCausalLM.from_components(
            generator=str(root / "generator"), reasoner=str(root / "reasoner")
        )
        model.save_pretrained(target)
        workspace["tokenizer"].save_pretrained(target)
    return target


def start_cli(argv: list[str]) -> multiprocessing.Process:
    """``flythinker <argv>`` in a child process (from a fork server: see tests/cli_runner.py), so a test
    can SIGKILL it."""
    from tests.cli_runner import start

    return start(argv)


def kill_when(process: multiprocessing.Process, condition, timeout: float = 120.0) -> bool:
    """SIGKILL ``process`` as soon as ``condition()`` holds; False if it exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            os.kill(process.pid, signal.SIGKILL)
            process.join()
            return True
        if not process.is_alive():
            process.join()
            return False
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    raise TimeoutError("the condition never held")


def run_cli(argv: list[str], timeout: float = 300.0) -> int:
    process = start_cli(argv)
    process.join(timeout)
    if process.is_alive():
        os.kill(process.pid, signal.SIGKILL)
        raise TimeoutError(f"flythinker {argv[0]} did not finish")
    return process.exitcode


def line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0
