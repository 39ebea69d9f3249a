"""No engine process outlives what started it.

* ``run_tagged.sh`` (what ``ci.sh`` runs the tests under) ends, on timeout, on a signal and on a normal
  exit, every process its command started, also those in a session of their own (``vllm serve`` in
  the tests). A control shows that coreutils' ``timeout`` alone leaves such a process behind.
* The README's offline ``LLM`` example, killed with SIGKILL after it generated, leaves no engine
  process (it runs the engine core in its own process only when asked to). With vLLM's default
  engine-core process the same kill left ``VLLM::EngineCore`` and ``VLLM::Worker`` (~2.3 GiB) running.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[1]
RUN_TAGGED = PLUGIN / "run_tagged.sh"


def processes_with(marker: str) -> list[int]:
    """pids whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                status = (entry / "stat").read_text().split(") ")[-1][0]
            except OSError:
                continue
            if marker in command and status != "Z":
                found.append(int(entry.name))
    return found


def in_session(session: int) -> list[int]:
    """Live (non-zombie) pids of a session."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().split(") ")[-1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[3]) == session:
                found.append(int(entry.name))
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def marker(request) -> str:
    """A unique ``sleep`` duration: its command line finds the test's processes."""
    return f"{1000 + (os.getpid() % 1000)}.{abs(hash(request.node.name)) % 10**6}"


def escaping_command(marker: str) -> list[str]:
    """A child in a session of its own (as ``vllm serve``) plus one in the command's group."""
    return ["bash", "-c", f"setsid sleep {marker} & sleep {marker}"]


def test_timeout_alone_leaves_a_new_session_behind(marker):
    """Control: the leftover the run_tagged tests look for is real."""
    subprocess.run(["timeout", "2", *escaping_command(marker)], timeout=60)
    try:
        assert processes_with(f"sleep {marker}"), "expected `timeout` to leave the setsid child running"
    finally:
        kill_all(processes_with(f"sleep {marker}"))


def test_run_tagged_ends_everything_on_timeout(marker):
    start = time.monotonic()
    result = subprocess.run(["bash", str(RUN_TAGGED), "2", *escaping_command(marker)], capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, RUN_TAGGED_GRACE_S="3"))  # fmt: skip
    leftover = processes_with(f"sleep {marker}")
    kill_all(leftover)
    assert result.returncode == 124, result.stderr
    assert "timed out after 2 s" in result.stderr
    assert leftover == []
    assert time.monotonic() - start < 60


def test_run_tagged_ends_leftovers_of_a_normal_exit_and_keeps_the_status(marker):
    command = ["bash", "-c", f"setsid sleep {marker} & exit 3"]
    result = subprocess.run(
        ["bash", str(RUN_TAGGED), "60", *command], capture_output=True, text=True, timeout=120
    )
    leftover = processes_with(f"sleep {marker}")
    kill_all(leftover)
    assert result.returncode == 3 and leftover == []


def test_run_tagged_ends_everything_when_terminated(marker):
    runner = subprocess.Popen(["bash", str(RUN_TAGGED), "600", *escaping_command(marker)],
                              stderr=subprocess.PIPE, text=True, env=dict(os.environ, RUN_TAGGED_GRACE_S="3"))  # fmt: skip
    deadline = time.monotonic() + 30
    while len(processes_with(f"sleep {marker}")) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    runner.send_signal(signal.SIGTERM)
    status = runner.wait(timeout=60)
    leftover = processes_with(f"sleep {marker}")
    kill_all(leftover)
    assert status == 143 and leftover == []


def test_run_tagged_usage_error():
    result = subprocess.run(["bash", str(RUN_TAGGED), "soon", "true"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage: run_tagged.sh LIMIT_S COMMAND" in result.stderr


# --------------------------------------------------------------------------- the README's LLM example
def readme_offline_example() -> str:
    text = (PLUGIN / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (example,) = [block for block in blocks if "LLM(" in block]
    return example


def word_tokenizer_directory(model_dir: Path, target: Path, vocab_size: int = 384) -> Path:
    """A copy of ``model_dir`` with a word-level tokenizer of the model's vocabulary size."""
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    shutil.copytree(model_dir, target)
    words = ["[UNK]", "Hello"] + [f"w{i}" for i in range(vocab_size - 2)]
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(target)
    return target


def test_readme_offline_example_killed_leaves_no_engine_process(tiny_dir, tmp_path):
    model_dir = word_tokenizer_directory(tiny_dir, tmp_path / "with-tokenizer")
    script = readme_offline_example().replace("path/to/flythinker-dir", str(model_dir))
    assert script != readme_offline_example(), "the README example names no model directory to replace"
    script += "\nimport time\nprint('READY', flush=True)\ntime.sleep(600)\n"
    (tmp_path / "example.py").write_text(script)
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the example decides
    log = (tmp_path / "example.log").open("w+")
    example = subprocess.Popen([sys.executable, str(tmp_path / "example.py")], stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True, env=env)  # fmt: skip
    session = example.pid
    try:
        deadline = time.monotonic() + 600
        while "READY" not in (tmp_path / "example.log").read_text():
            assert example.poll() is None, (tmp_path / "example.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "the example did not generate in time"
            time.sleep(1)
        example.kill()  # SIGKILL: no finaliser of the example runs
        example.wait()
        time.sleep(5)
        leftover = in_session(session)
    finally:
        kill_all(in_session(session))
        log.close()
    assert leftover == [], f"engine processes outlived the killed example: {leftover}"
