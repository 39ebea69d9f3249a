"""``make gpu-check``: the one prepared check to run when a GPU is lent (issue 25; docs/gpu-check.md).

No argument. On a machine with CUDA it runs, in this order and inside one budget of
:data:`BUDGET_S` seconds (each step also has its own limit; a step that no longer fits is recorded as
skipped, never left half-reported):

1. ``install`` — makes ``flythinker`` importable (``pip install --no-deps --no-build-isolation -e .``,
   offline) and installs the pinned optional packages of ``bench/gpu_requirements.txt`` (Liger-Kernel)
   with ``--no-deps``: from a wheel folder ``.whl/`` when there is one, else from PyPI. Nothing else is
   installed; a package that cannot be had is recorded and its comparison skipped.
2. ``gpu-tests`` — every test marked ``gpu`` (``pytest -m gpu`` on the files that hold such marks:
   Triton kernels compiled for real, CUDA streams, CUDA graphs through ``compile=True``).
3. ``kernels`` — ``bench/bench_kernels.py --device cuda``: ours vs eager vs ``torch.compile`` (and
   Liger-Kernel's fused linear cross-entropy when installed).
4. ``decode`` — ``bench/bench_decode_gpu.py``: the generator alone vs sequential / cuda-streams /
   cuda-streams + CUDA graphs, tokens compared with sequential's.
5. ``vllm-env`` — a vLLM environment for the plugin (``serving/vllm/.venv-gpu``, pinned ``vllm``)
   unless one exists (``FLYTHINKER_VLLM_PYTHON``, that folder, or this Python importing vllm).
6. ``vllm-exactness`` — the plugin's exactness and refusal tests on the GPU, and the overlapped
   decode step (R on a side CUDA stream, ``FLYTHINKER_VLLM_OVERLAP=1``).
7. ``vllm-throughput`` — ``bench/bench_serving.py --synthetic``: the pair vs the generator alone.

Writes ``bench/results/gpu_check.json`` and ``gpu_check.md`` (device name, versions, every step's
status, time and output tail), beside the steps' own files (``kernels_cuda_*``, ``gpu_decode.*``,
``serving_gpu.*``). Without CUDA it exits 2 at once with one line on stderr. ``--list`` prints the
plan without running anything (no CUDA needed; used by the tests).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REQUIREMENTS = ROOT / "bench" / "gpu_requirements.txt"
WHEELS = ROOT / ".whl"
VLLM_VENV = ROOT / "serving" / "vllm" / ".venv-gpu"
BUDGET_S = 470  # under 8 minutes, the start of Python and the report included
NO_CUDA_EXIT = 2


class NoCuda(RuntimeError):
    """This machine cannot run the check (no torch, or torch sees no CUDA device)."""


@dataclass(frozen=True)
class Step:
    """One step: a command run from ``cwd`` with a time limit; ``needs`` names what must exist first."""

    name: str
    command: tuple[str, ...]
    timeout_s: int
    cwd: Path = ROOT
    needs: str = ""  # "" | "vllm": skipped (with the reason) when that is missing
    env: dict = field(default_factory=dict)


def pinned_requirements(path: Path = REQUIREMENTS) -> list[str]:
    """``name==version`` lines of ``path`` (comments and blanks dropped); anything unpinned is an error."""
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "==" not in line or any(c in line for c in "<>~!*"):
            raise ValueError(f"{path.name}: {line!r} is not pinned; write name==version")
        lines.append(line)
    return lines


def vllm_pins(path: Path = ROOT / "serving" / "vllm" / "gpu-constraints.txt") -> list[str]:
    """The pinned packages of the plugin's GPU environment."""
    return pinned_requirements(path)


def gpu_test_files(root: Path = ROOT) -> list[str]:
    """Test files (relative to ``root``) that hold a ``pytest.mark.gpu``: only those are collected, so a
    missing training dependency elsewhere cannot stop the run at collection."""
    mark = re.compile(r"^\s*(@pytest\.mark\.gpu\b|pytestmark\s*=.*pytest\.mark\.gpu\b)", re.M)
    files = []
    for path in sorted((root / "tests").rglob("test_*.py")):
        if mark.search(path.read_text()):
            files.append(str(path.relative_to(root)))
    return files


def find_vllm_python(python: str = sys.executable) -> str | None:
    """A Python that imports vllm: ``FLYTHINKER_VLLM_PYTHON``, then ``serving/vllm/.venv-gpu``, then this one."""
    candidates = [os.environ.get("FLYTHINKER_VLLM_PYTHON", ""), str(VLLM_VENV / "bin" / "python"), python]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            probe = subprocess.run([candidate, "-c", "import vllm"], capture_output=True, timeout=120)
            if probe.returncode == 0:
                return candidate
    return None


def plan(python: str = sys.executable, vllm_python: str | None = None, results: Path = RESULTS) -> list[Step]:
    """The steps, in order (see the module docstring). ``vllm_python`` None: the vLLM steps use the
    environment ``vllm-env`` builds."""
    vpy = vllm_python or str(VLLM_VENV / "bin" / "python")
    plugin = ROOT / "serving" / "vllm"
    scratch = results / ".gpu_check"
    return [
        Step("install", (python, str(Path(__file__).resolve()), "--install"), 90),
        Step(
            "gpu-tests",
            (
                python,
                "-m",
                "pytest",
                "-q",
                "-m",
                "gpu",
                "-p",
                "no:cacheprovider",
                "--continue-on-collection-errors",
                f"--junitxml={scratch / 'gpu_tests.xml'}",
                *gpu_test_files(),
            ),
            150,
        ),  # fmt: skip
        Step("kernels", (python, "bench/bench_kernels.py", "--device", "cuda", "--out", str(results)), 150),
        Step("decode", (python, "bench/bench_decode_gpu.py", "--out", str(results / "gpu_decode.json")), 90),
        Step("vllm-env", (python, str(Path(__file__).resolve()), "--vllm-env"), 200),
        Step(
            "vllm-exactness",
            (
                vpy,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/test_refusals.py",
                "tests/test_exactness.py",
                "tests/test_overlap.py",
                "-k",
                "decision or gpu or uneven or chunked or prefix or overlap",
            ),
            150,
            cwd=plugin,
            needs="vllm",
        ),  # fmt: skip
        Step(
            "vllm-throughput",
            (vpy, "bench/bench_serving.py", "--synthetic", "--quick", "--out", str(results)),
            120,
            needs="vllm",
        ),  # fmt: skip
    ]


def require_cuda() -> str:
    """The device name, or :class:`NoCuda` with the one line to print."""
    try:
        import torch
    except ImportError as error:
        raise NoCuda(
            f"gpu-check: PyTorch is not importable here ({error}); run it where torch sees a GPU"
        ) from None
    if not torch.cuda.is_available():
        raise NoCuda(
            f"gpu-check: no CUDA device (torch {torch.__version__} sees none); run it on a machine with an "
            "NVIDIA GPU (docs/gpu-check.md)"
        )
    return torch.cuda.get_device_name(0)


# ---------------------------------------------------------------------------------------- install steps
def _pip(python: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    command = [python, "-m", "pip", "install", "--disable-pip-version-check", "--quiet", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def _installed(requirement: str, python: str = sys.executable) -> bool:
    name, version = requirement.split("==")
    code = f"import importlib.metadata as m; raise SystemExit(m.version({name!r}) != {version!r})"
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


def _sources() -> list[str]:
    """pip source options: the wheel folder when present (no index), else PyPI with a short timeout."""
    if WHEELS.is_dir() and any(WHEELS.glob("*.whl")):
        return ["--no-index", "--find-links", str(WHEELS)]
    return ["--timeout", "15", "--retries", "0"]


def install() -> int:
    """Step ``install``: flythinker importable; the pinned optional packages where they can be had."""
    if importlib.util.find_spec("flythinker") is None:
        done = _pip(sys.executable, "--no-deps", "--no-build-isolation", "-e", str(ROOT))
        if done.returncode != 0:
            print(f"install: flythinker could not be installed:\n{done.stderr[-2000:]}")
            return 1
        print("install: flythinker installed (editable, --no-deps)")
    for requirement in pinned_requirements():
        if _installed(requirement):
            print(f"install: {requirement} already installed")
            continue
        done = _pip(sys.executable, "--no-deps", *_sources(), requirement)
        state = "installed" if done.returncode == 0 else f"UNAVAILABLE ({done.stderr.strip()[-300:]})"
        print(f"install: {requirement} {state}")
    return 0


def build_vllm_env() -> int:
    """Step ``vllm-env``: ``serving/vllm/.venv-gpu`` with the pinned vLLM (its CUDA torch) + the plugin."""
    existing = find_vllm_python()
    if existing is not None:
        print(f"vllm-env: a Python with vllm exists ({existing})")
        return 0
    python = VLLM_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VLLM_VENV)], check=True)
    done = _pip(str(python), *_sources(), *vllm_pins(), timeout=600)
    if done.returncode != 0:
        print(f"vllm-env: vLLM could not be installed (no PyPI and no .whl/ here?):\n{done.stderr[-1500:]}")
        return 1
    done = _pip(str(python), "--no-deps", "-e", str(ROOT), "-e", str(ROOT / "serving" / "vllm"))
    print(
        "vllm-env: ready"
        if done.returncode == 0
        else f"vllm-env: plugin install failed:\n{done.stderr[-1500:]}"
    )
    return done.returncode


# ---------------------------------------------------------------------------------------- running
def run_step(step: Step, limit_s: float, log_dir: Path) -> dict:
    """Run one step with ``min(step.timeout_s, limit_s)``; its output goes to ``log_dir/<name>.log``.

    The step runs in a process group of its own, which is killed when it ends (timeout or not), so no
    engine or worker it started keeps the GPU's memory from the next step.
    """
    log = log_dir / f"{step.name}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", **step.env)
    start = time.monotonic()
    with open(log, "w") as handle:
        process = subprocess.Popen(step.command, cwd=step.cwd, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)  # fmt: skip
        try:
            code = process.wait(timeout=limit_s)
            status = "passed" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {limit_s:.0f} s"
        finally:
            _kill_group(process)
    tail = log.read_text(errors="replace")[-3000:]
    return {"step": step.name, "status": status, "seconds": round(time.monotonic() - start, 1), "tail": tail}


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def run_plan(steps: list[Step], budget_s: float, log_dir: Path, min_step_s: float = 20) -> list[dict]:
    """Every step in order inside ``budget_s``; a step needing vllm is skipped when none is found, and
    one that would get less than ``min_step_s`` is skipped as out of time."""
    log_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget_s
    records = []
    vllm_python = None  # looked up once, and again after vllm-env (importing vllm takes seconds)
    for step in steps:
        left = deadline - time.monotonic()
        if left < min_step_s:
            records.append(
                {"step": step.name, "status": f"skipped: out of time ({left:.0f} s left)", "seconds": 0}
            )
            continue
        if step.needs == "vllm" and vllm_python is None:
            vllm_python = find_vllm_python() or ""
        if step.needs == "vllm" and not vllm_python:
            records.append({"step": step.name, "status": "skipped: no Python with vllm", "seconds": 0})
            continue
        print(f"[gpu-check] {step.name} (limit {min(step.timeout_s, left):.0f} s)", flush=True)
        records.append(run_step(step, min(step.timeout_s, left), log_dir))
        if step.name == "vllm-env":
            vllm_python = None
        print(f"[gpu-check] {step.name}: {records[-1]['status']} in {records[-1]['seconds']} s", flush=True)
    return records


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "triton", "transformers", "liger-kernel", "flash-attn", "vllm"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def report_markdown(report: dict) -> str:
    lines = [
        f"# GPU check — {report['device']}",
        "",
        f"{report['timestamp']}; total {report['total_s']} s (budget {report['budget_s']} s). Versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v),
        "",
        "| step | status | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {r['step']} | {r['status']} | {r['seconds']} |" for r in report["steps"]]
    lines += [
        "",
        "Each step's output: `bench/results/.gpu_check/<step>.log`; its own results beside this file.",
    ]
    return "\n".join(lines) + "\n"


def write_report(report: dict, results: Path = RESULTS) -> Path:
    """``gpu_check.json`` and ``gpu_check.md`` in ``results`` (each written to a temporary name, then renamed)."""
    results.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("gpu_check.json", json.dumps(report, indent=1) + "\n"),
        ("gpu_check.md", report_markdown(report)),
    ):
        partial = results / f".{name}.partial"
        partial.write_text(text)
        os.replace(partial, results / name)
    return results / "gpu_check.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the steps and exit (no CUDA needed)")
    parser.add_argument("--install", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vllm-env", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.list:
        for step in plan():
            needs = f" [needs {step.needs}]" if step.needs else ""
            print(f"{step.name} ({step.timeout_s} s){needs}: {' '.join(step.command)}")
        return 0
    try:
        device = require_cuda()
    except NoCuda as error:
        print(str(error), file=sys.stderr)
        return NO_CUDA_EXIT
    if args.install:
        return install()
    if args.vllm_env:
        return build_vllm_env()
    start = time.monotonic()
    print(f"[gpu-check] {device}; budget {BUDGET_S} s", flush=True)
    records = run_plan(plan(vllm_python=find_vllm_python()), BUDGET_S - 10, RESULTS / ".gpu_check")
    report = {
        "device": device,
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "budget_s": BUDGET_S,
        "total_s": round(time.monotonic() - start, 1),
        "versions": versions(),
        "steps": records,
    }
    print(report_markdown(report))
    write_report(report)
    return 0 if all(r["status"] == "passed" or r["status"].startswith("skipped") for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
