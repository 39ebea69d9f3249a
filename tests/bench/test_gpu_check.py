"""`make gpu-check` (bench/gpu_check.py): its plan, its refusal without CUDA, its runner and report.

The check itself needs a GPU; what is tested here is what decides whether it can work the day one is
lent: every step is assembled and points at files that exist, it stops at once and clearly where
there is no CUDA, each step's time limit and the overall budget hold, and the report names the device.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import bench_decode_gpu, gpu_check

ROOT = Path(__file__).resolve().parents[2]
needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")


def test_plan_has_every_step_in_order():
    steps = gpu_check.plan(python="py", vllm_python="vpy")
    assert [s.name for s in steps] == [
        "install", "gpu-tests", "kernels", "decode", "vllm-env", "vllm-exactness", "vllm-throughput",
    ]  # fmt: skip
    assert all(0 < s.timeout_s <= gpu_check.BUDGET_S for s in steps)
    assert gpu_check.BUDGET_S < 8 * 60
    by_name = {s.name: s for s in steps}
    assert by_name["gpu-tests"].command[:6] == ("py", "-m", "pytest", "-q", "-m", "gpu")
    assert by_name["vllm-exactness"].command[0] == "vpy" and by_name["vllm-exactness"].needs == "vllm"
    assert by_name["vllm-throughput"].needs == "vllm" and "--synthetic" in by_name["vllm-throughput"].command
    assert "--device" in by_name["kernels"].command and "cuda" in by_name["kernels"].command


def test_every_file_a_step_runs_exists():
    for step in gpu_check.plan(python="py", vllm_python="vpy"):
        for part in step.command[1:]:
            if part.endswith(".py") and not part.startswith("-"):
                assert (step.cwd / part).exists(), f"{step.name}: {part} does not exist under {step.cwd}"


def test_gpu_tests_are_the_files_with_gpu_marks():
    files = gpu_check.gpu_test_files()
    assert "tests/decoding/test_schedules.py" in files and "tests/kernels/test_latent_injection.py" in files
    for name in files:
        assert "@pytest.mark.gpu" in (ROOT / name).read_text()
    assert "tests/bench/test_gpu_check.py" not in files


def test_installs_are_pinned(tmp_path):
    assert gpu_check.pinned_requirements() == ["liger-kernel==0.8.5"]
    assert any(pin.startswith("vllm==") for pin in gpu_check.vllm_pins())
    loose = tmp_path / "req.txt"
    loose.write_text("# a comment\nliger-kernel>=0.8\n")
    with pytest.raises(ValueError, match="'liger-kernel>=0.8' is not pinned; write name==version"):
        gpu_check.pinned_requirements(loose)


@needs_no_cuda
def test_refuses_without_cuda_at_once_with_one_line():
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)  # fmt: skip
    assert done.returncode == gpu_check.NO_CUDA_EXIT == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA device"), done.stderr
    assert done.stdout == ""
    assert time.monotonic() - start < 60


@needs_no_cuda
def test_make_gpu_check_fails_without_cuda():
    done = subprocess.run(["make", "-s", "gpu-check", f"GPU_PYTHON={sys.executable}"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert done.returncode != 0
    assert "gpu-check: no CUDA device" in done.stderr


def test_list_needs_no_cuda():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--list"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0
    assert [line.split(" ")[0] for line in done.stdout.splitlines()][:4] == [
        "install",
        "gpu-tests",
        "kernels",
        "decode",
    ]


def fake(name: str, code: str, timeout_s: int = 30, needs: str = "") -> gpu_check.Step:
    return gpu_check.Step(name, (sys.executable, "-c", code), timeout_s, needs=needs)


def test_runner_records_pass_fail_timeout_and_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "find_vllm_python", lambda: None)
    steps = [
        fake("ok", "print('fine')"),
        fake("bad", "raise SystemExit(3)"),
        fake("slow", "import time; time.sleep(60)", timeout_s=2),
        fake("plugin", "print('never')", needs="vllm"),
        fake("late", "import time; time.sleep(60)", timeout_s=300),
        fake("after", "print('no time left')"),
    ]
    start = time.monotonic()
    records = gpu_check.run_plan(steps, budget_s=16, log_dir=tmp_path, min_step_s=1)
    status = {r["step"]: r["status"] for r in records}
    assert status["ok"] == "passed" and "fine" in records[0]["tail"]
    assert status["bad"] == "failed (exit 3)"
    assert status["slow"] == "timed out after 2 s"
    assert status["plugin"] == "skipped: no Python with vllm"
    assert status["late"].startswith("timed out after")  # cut to what was left of the budget
    assert status["after"].startswith("skipped: out of time")
    assert time.monotonic() - start < 30
    assert (tmp_path / "ok.log").read_text().strip() == "fine"


def test_a_step_leaves_no_process_behind(tmp_path):
    """A step's children (an engine, a worker) are killed with it, also after a timeout."""
    marker = tmp_path / "child-alive"
    child = f"import time, pathlib; time.sleep(3); pathlib.Path({str(marker)!r}).write_text('x')"
    code = (
        f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"
    )
    record = gpu_check.run_step(fake("parent", code, timeout_s=1), 1, tmp_path)
    assert record["status"] == "timed out after 1 s"
    time.sleep(5)
    assert not marker.exists(), "the step's child outlived it"


def test_report_names_the_device(tmp_path):
    report = {
        "device": "NVIDIA H100 80GB HBM3", "timestamp": "t", "budget_s": 470, "total_s": 1.0,
        "versions": {"torch": "2.11.0", "vllm": None},
        "steps": [{"step": "kernels", "status": "passed", "seconds": 3.0, "tail": ""}],
    }  # fmt: skip
    path = gpu_check.write_report(report, tmp_path)
    assert json.loads(path.read_text())["device"] == "NVIDIA H100 80GB HBM3"
    md = (tmp_path / "gpu_check.md").read_text()
    assert md.startswith("# GPU check — NVIDIA H100 80GB HBM3") and "| kernels | passed | 3.0 |" in md
    assert "vllm" not in md.split("\n")[2]  # versions that are not installed are not listed
    assert not list(tmp_path.glob("*.partial"))


def test_decode_benchmark_runs_on_cpu_as_a_plumbing_check(tmp_path):
    out = tmp_path / "gpu_decode.json"
    args = ["--device", "cpu", "--layers", "1", "--batches", "2", "--prompt", "6", "--new-tokens", "3",
            "--repeats", "1", "--configs", "hf_generate", "sequential", "--out", str(out)]  # fmt: skip
    report = bench_decode_gpu.main(args)
    rows = report["batches"]["2"]
    assert rows["sequential"]["tokens_equal_sequential"] is True
    assert rows["hf_generate"]["tokens_equal_sequential"] is None
    assert rows["hf_generate"]["vs_generator_alone"] == pytest.approx(1.0)
    assert json.loads(out.read_text())["device"] == "CPU (plumbing test)"
    assert "| 2 | sequential |" in out.with_suffix(".md").read_text()
