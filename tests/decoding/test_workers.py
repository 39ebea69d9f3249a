"""The default schedule from a plain script (no ``__main__`` guard) and from ``python -c``; a worker
killed mid-generation gives a clear error, is reaped, and its parent exits on time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import os, signal, torch
import flythinker
from flythinker.decoding import WorkerDied, stream, worker_pids
from tests.decoding._helpers import CharTokenizer
from tests.tiny_models import left_padded_batch, tiny_flythinker

model = tiny_flythinker(dtype=torch.float32, seed=3)
ids, mask, _ = left_padded_batch([5, 9], seed=3)
reference = flythinker.generate(model, ids, mask, schedule="sequential", max_new_tokens=8, pad_token_id=0)
out = flythinker.generate(model, ids, mask, max_new_tokens=8, pad_token_id=0)  # the default schedule
assert out.settings.schedule == "processes", out.settings.schedule
assert torch.equal(out.sequences, reference.sequences)
print("default schedule: same tokens", flush=True)
if KILL:
    pieces = iter(stream(model, ids[:1], mask[:1], tokenizer=CharTokenizer(), max_new_tokens=40,
                         schedule="processes", pad_token_id=0))
    next(pieces)
    (pid,) = worker_pids()
    os.kill(pid, signal.SIGKILL)
    try:
        for _ in pieces:
            pass
        raise SystemExit("no error after the worker was killed")
    except WorkerDied as error:
        print("error:", error, flush=True)
    assert worker_pids() == [] and not os.path.exists(f"/proc/{pid}"), "the dead worker was not reaped"
    again = flythinker.generate(model, ids, mask, max_new_tokens=8, pad_token_id=0)  # starts a new worker
    assert again.settings.schedule == "processes" and torch.equal(again.sequences, reference.sequences)
    print("after the kill: new worker, same tokens", flush=True)
"""


def start_python(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_default_schedule_from_a_plain_script_and_python_c_and_a_killed_worker(tmp_path):
    """Both programs run at once (they mostly import torch); each must finish on its own, in time."""
    script = tmp_path / "plain_script.py"  # no `if __name__ == "__main__":` guard
    script.write_text("KILL = True\n" + SCRIPT)
    runs = {"script": start_python([str(script)]), "-c": start_python(["-c", "KILL = False\n" + SCRIPT])}
    output = {}
    for name, process in runs.items():
        try:
            output[name] = process.communicate(timeout=300)[0]
        except subprocess.TimeoutExpired:
            for other in runs.values():
                other.kill()
            raise AssertionError(f"{name}: did not finish within 300 s (a hang at exit?)") from None
        assert process.returncode == 0, f"{name}:\n{output[name]}"
        assert "default schedule: same tokens" in output[name], output[name]
    killed = output["script"]
    assert "died (killed by signal 9, SIGKILL)" in killed
    assert "schedule='threads'" in killed  # says what to do
    assert "after the kill: new worker, same tokens" in killed


def test_a_worker_that_cannot_start_says_why_and_concurrent_falls_back(monkeypatch):
    import torch

    from flythinker.decoding import WorkerStartError, generate, workers
    from tests.tiny_models import left_padded_batch, tiny_flythinker

    monkeypatch.setattr(workers.sys, "executable", "/nonexistent/python")
    monkeypatch.setattr(workers, "_WORKERS", [])
    model = tiny_flythinker(seed=3)
    ids, mask, _ = left_padded_batch([4, 6], seed=3)
    with pytest.raises(WorkerStartError, match=r"could not start .*/nonexistent/python.*schedule='threads'"):
        generate(model, ids, mask, max_new_tokens=4, pad_token_id=0, schedule="processes")
    with pytest.warns(UserWarning, match="schedule='threads' instead"):
        out = generate(model, ids, mask, max_new_tokens=4, pad_token_id=0)
    assert out.settings.schedule == "threads"
    assert not out.settings.share_head  # the settings say what ran: threads share no head
    reference = generate(model, ids, mask, max_new_tokens=4, pad_token_id=0, schedule="sequential")
    assert torch.equal(out.sequences, reference.sequences)


@pytest.mark.slow
def test_interleaved_calls_each_get_their_own_worker():
    """A half-read stream keeps its worker; a call made meanwhile gets another one (never shares it)."""
    import torch

    from flythinker.decoding import generate, stream
    from tests.decoding._helpers import CharTokenizer
    from tests.tiny_models import left_padded_batch, tiny_flythinker

    model = tiny_flythinker(seed=5)
    ids, mask, _ = left_padded_batch([3, 7], seed=5)
    kwargs = dict(max_new_tokens=10, pad_token_id=0)
    reference = generate(model, ids, mask, schedule="sequential", **kwargs)
    first = stream(model, ids, mask, tokenizer=CharTokenizer(), schedule="processes", **kwargs)
    pieces = iter(first)
    next(pieces)
    middle = generate(model, ids, mask, schedule="processes", **kwargs)
    list(pieces)
    assert torch.equal(middle.sequences, reference.sequences)
    assert torch.equal(first.output.sequences, reference.sequences)


def test_a_worker_that_dies_while_starting_quotes_its_output(monkeypatch):
    from flythinker.decoding import WorkerStartError, workers

    monkeypatch.setattr(workers, "_BOOT", "import sys; print('no module named something'); sys.exit(3)")
    with pytest.raises(
        WorkerStartError,
        match=r"(?s)did not start \(exit code 3\); use schedule='threads'.*\nno module named something$",
    ):
        workers.Worker(1)


@pytest.mark.slow
def test_the_side_running_alone_gets_every_thread_and_the_tokens_stay(monkeypatch):
    """processes, threads (1, 1), a 3-chunk prefill: G's chunks 0 and 1 run beside R (1 thread), G's last
    chunk runs alone (2 threads: the worker is idle), every decode step runs beside R again (1 thread)."""
    import torch

    import flythinker
    from flythinker.decoding import steps
    from tests.tiny_models import left_padded_batch, tiny_flythinker

    model = tiny_flythinker(dtype=torch.float32, seed=3)
    ids, mask, _ = left_padded_batch([9], seed=3)
    reference = flythinker.generate(model, ids, mask, schedule="sequential", max_new_tokens=4, pad_token_id=0)
    seen = []
    original = steps.GeneratorSide.forward_chunk

    def recording(self, input_ids, *args):
        seen.append((input_ids.shape[1], torch.get_num_threads()))
        return original(self, input_ids, *args)

    monkeypatch.setattr(steps.GeneratorSide, "forward_chunk", recording)
    saved = torch.get_num_threads()
    out = flythinker.generate(
        model,
        ids,
        mask,
        schedule="processes",
        threads=(1, 1),
        prefill_chunk=3,
        max_new_tokens=4,
        pad_token_id=0,
    )
    assert torch.equal(out.sequences, reference.sequences)
    assert seen == [(3, 1), (3, 1), (3, 2), (1, 1), (1, 1), (1, 1)]
    assert torch.get_num_threads() == saved  # restored after the call


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc/<pid>/environ")
def test_the_worker_lets_idle_openmp_threads_sleep_soon_unless_the_user_says_otherwise(monkeypatch):
    import torch

    import flythinker
    from flythinker.decoding import shutdown_workers, worker_pids
    from tests.tiny_models import left_padded_batch, tiny_flythinker

    model = tiny_flythinker(dtype=torch.float32, seed=3)
    ids, mask, _ = left_padded_batch([5], seed=3)

    def worker_environment() -> dict[str, str]:
        shutdown_workers()
        flythinker.generate(model, ids, mask, schedule="processes", max_new_tokens=2, pad_token_id=0)
        (pid,) = worker_pids()
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        return dict(item.decode().split("=", 1) for item in raw if b"=" in item)

    try:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
        assert worker_environment()["GOMP_SPINCOUNT"] == "10000"
        monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
        env = worker_environment()
        assert env["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in env
    finally:
        shutdown_workers()
