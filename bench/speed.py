"""Issue 12's tables in one command: the training step against its floor, and decoding against
transformers' ``generate`` of the generator alone.

    python bench/speed.py              # ≈ 16 minutes on 2 quiet cores (``make bench-speed``)
    python bench/speed.py --quick      # a smoke run of the same code paths (tiny settings)

Runs, one after the other in fresh interpreters (so neither inherits the other's threads or heap):

1. ``bench/bench_train.py --variants flythinker_padded,sft,reasoner_fwd_bwd`` — interleaved, paired
   rounds; writes ``train_cpu_floor.{json,md}`` with the three floor ratios and their spread;
2. ``bench/bench_decode.py`` — ``hf_generate``, the generator loop, sequential, threads and processes
   in paired repeats at batch 1 and 8, a TTFT section, exact-token checks; writes
   ``decode_cpu.{json,md}``;

then ``speed_cpu.md``: both goal tables, the load average before and after each part, the commands and
the git commit. On a CUDA machine the training part runs on the GPU (``train_cuda_floor``); the decode
part is CPU-only (its CUDA schedules are measured by ``bench_kernels.py`` and the GPU tests).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from pep_data import pep_split  # noqa: E402

TRAIN_ARGS = ["--variants", "flythinker_padded,sft,reasoner_fwd_bwd", "--repeats", "16"]
DECODE_ARGS = ["--repeats", "5", "--ttft-repeats", "3", "--long-prompt", "1536", "--new-tokens", "64"]
QUICK_TRAIN = ["--variants", "flythinker_padded,sft,reasoner_fwd_bwd", "--repeats", "2", "--records", "1",
               "--max-length", "256", "--max-target-tokens", "64"]  # fmt: skip
QUICK_DECODE = ["--quick"]


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(HERE), "status", "--porcelain"], capture_output=True, text=True, check=True
        ).stdout.strip()
        return out.stdout.strip() + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def idle_fraction(seconds: float = 3.0) -> float | None:
    """Share of all cores' time spent idle over ``seconds`` (Linux ``/proc/stat``), nothing of ours
    running: how quiet the machine is right now (the load average also remembers our last minute)."""

    def sample():
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        return values[3] + values[4], sum(values[:8])  # idle + iowait, total (guest time excluded)

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (idle1 - idle0) / max(total1 - total0, 1)


def _run(script: str, args: list[str]) -> dict:
    """Run one benchmark in a fresh interpreter; how idle the machine was just before, its load
    average before/after, and the exit code."""
    idle = idle_fraction()
    before = [round(x, 2) for x in os.getloadavg()]
    command = [sys.executable, str(HERE / script), *args]
    print("$ " + " ".join(command[1:]), flush=True)
    began = time.perf_counter()
    code = subprocess.run(command, check=False).returncode
    return {
        "command": " ".join(["python", f"bench/{script}", *args]),
        "exit_code": code,
        "idle_before": None if idle is None else round(idle, 3),
        "seconds": round(time.perf_counter() - began, 1),
        "load_before": before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def _section(md: Path, heading: str) -> list[str]:
    """The lines of ``md`` from the first line starting with ``heading`` to the next blank line."""
    if not md.exists():
        return [f"({md.name} was not written)"]
    lines, out, on = md.read_text().splitlines(), [], False
    for line in lines:
        if line.startswith(heading):
            on = True
        if on:
            if not line.strip() and out and out[-1].startswith("|"):
                break
            out.append(line)
    return out or [f"({heading!r} not found in {md.name})"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the code paths only")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: bench/results)")
    parser.add_argument("--skip-train", action="store_true", help="only the decode part")
    parser.add_argument("--skip-decode", action="store_true", help="only the training part")
    parser.add_argument(
        "--data", help="the PEP splits' folder, passed to both benchmarks (bench/pep_data.py)"
    )
    args = parser.parse_args(argv)
    pep_split(args.data, "user_train", "bench/speed.py")  # fail here, not in the first child
    pep_split(args.data, "user_val", "bench/speed.py")
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    parts = {}
    if not args.skip_train:
        train = (QUICK_TRAIN if args.quick else TRAIN_ARGS) + ["--out", str(args.out), "--stem",
                                                               f"train_cpu_floor{suffix}", "--data", args.data]  # fmt: skip
        parts["train"] = _run("bench_train.py", train)
    if not args.skip_decode:
        decode = (QUICK_DECODE if args.quick else DECODE_ARGS) + [
            "--out",
            str(args.out / f"decode_cpu{suffix}.json"),
            "--data",
            args.data,
        ]
        parts["decode"] = _run("bench_decode.py", decode)
    lines = [
        "# Issue 12 in one command: training step vs its floor, decoding vs transformers' generate",
        "",
        f"`python bench/speed.py{' --quick' if args.quick else ''}` at git {_git_commit()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}. Each part ran in a fresh interpreter:",
        "",
        "| part | command | exit | seconds | idle before (3 s, all cores) | load before (1/5/15 min) | "
        "load after |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, part in parts.items():
        idle = "–" if part["idle_before"] is None else f"{100 * part['idle_before']:.0f} %"
        lines.append(
            f"| {name} | `{part['command']}` | {part['exit_code']} | {part['seconds']} | {idle} | "
            f"{part['load_before']} | {part['load_after']} |"
        )
    if "train" in parts:
        md = args.out / f"train_cpu_floor{suffix}.md"
        lines += ["", f"## Training step ({md.name})", ""] + _section(md, "Against the floor")
    if "decode" in parts:
        md = args.out / f"decode_cpu{suffix}.md"
        lines += ["", f"## Decoding ({md.name})", ""] + _section(md, "| goal (issue 12)")
    target = args.out / f"speed_cpu{suffix}.md"
    tmp = target.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(target)
    (args.out / f"speed_cpu{suffix}.json").write_text(json.dumps(parts, indent=2) + "\n")
    print("\n".join(lines))
    return max((p["exit_code"] for p in parts.values()), default=0)


if __name__ == "__main__":
    sys.exit(main())
