"""Compile every Triton kernel configuration for sm_80 and sm_90 without a GPU; record resources.

    python bench/aot_compile.py --out bench/results/        # -> kernels_aot.json, kernels_aot.md

Runs :mod:`flythinker.kernels.aot` (the case table ``SPECS``: kernel x dtype x width/vocab x flags,
block size and ``num_warps`` taken from each launcher) in a child process without ``TRITON_INTERPRET``,
then writes every record (registers, stack frame, spill stores/loads, static + dynamic shared memory,
PTX / cubin sizes, compile seconds) and a markdown summary: one row per (kernel, target, dtype, BLOCK,
num_warps) with the worst case over the flag combinations. Exit status 1 when any configuration
fails the contract of ``aot.problems`` (compile error, spill, shared memory above the device limit).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_aot(archs=(80, 90), processes: int = 2, timeout: float = 1800) -> dict:
    """Run the AOT compiler in a clean child process; return its JSON payload (``records``, ``wall_s``)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the launch default; silences triton 3.9's warning
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "aot.json"
        cmd = [sys.executable, "-m", "flythinker.kernels.aot", "--arch", *map(str, archs), "--jobs", str(processes),
               "--json", str(path)]  # fmt: skip
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if not path.exists():
            raise RuntimeError(
                f"AOT compile produced no results (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
            )
        payload = json.loads(path.read_text())
    payload["returncode"] = proc.returncode
    payload["log_tail"] = proc.stderr[-2000:]
    return payload


def _dtype(record: dict) -> str:
    sig = record["signature"]
    first_ptr = next(v for v in sig.values() if v.startswith("*"))
    return first_ptr[1:]


def _block(record: dict) -> int:
    c = record["constexprs"]
    return c.get("BLOCK", c.get("BLOCK_V"))


def _flags(record: dict) -> str:
    c = record["constexprs"]
    return ",".join(k for k, v in c.items() if v is True) or "-"


def summary_rows(records: list[dict]) -> list[dict]:
    """Worst case per (kernel, arch, dtype, BLOCK, warps) over the flag combinations."""
    from flythinker.kernels.aot import problems

    groups: dict = {}
    for r in records:
        key = (r["kernel"], r["arch"], _dtype(r), _block(r), r["options"].get("num_warps"))
        groups.setdefault(key, []).append(r)
    rows = []
    for (kernel, arch, dtype, block, warps), rs in sorted(groups.items()):
        ok = [r for r in rs if "error" not in r]
        worst = max(ok, key=lambda r: r["registers"]) if ok else None
        rows.append({
            "kernel": kernel, "target": f"sm_{arch}", "dtype": dtype, "block": block, "num_warps": warps,
            "variants": len(rs), "errors": len(rs) - len(ok),
            "max_registers": max((r["registers"] for r in ok), default=None),
            "worst_flags": _flags(worst) if worst else "-",
            "max_spill_bytes": max((r["spill_store_bytes"] + r["spill_load_bytes"] for r in ok), default=None),
            "max_stack_bytes": max((r["stack_frame_bytes"] for r in ok), default=None),
            "max_smem_bytes": max((r["smem_bytes"] for r in ok), default=None),
            "uses_mma": any(r.get("uses_mma") for r in ok),
            "problems": [p for r in rs for p in problems(r)],
        })  # fmt: skip
    return rows


def _ptxas_versions() -> dict:
    os.environ.pop("TRITON_INTERPRET", None)
    try:
        from triton.backends.nvidia.compiler import get_ptxas_version

        return {f"sm_{a}": get_ptxas_version(a).strip().splitlines()[-1] for a in (80, 90)}
    except Exception as exc:  # noqa: BLE001 - informational only
        return {"error": str(exc)}


def write_results(payload: dict, out_dir: Path) -> tuple[Path, Path]:
    import torch
    import triton

    from flythinker.kernels.aot import ACCEPTED_SPILLS, SMEM_LIMIT, config_key, problems, spill_bytes

    records = payload["records"]
    rows = summary_rows(records)
    bad = [p for r in records for p in problems(r)]
    accepted = [
        f"{config_key(r)}: {r['spill_store_bytes']} B spill stores, {r['spill_load_bytes']} B spill loads "
        f"(accepted up to {ACCEPTED_SPILLS[config_key(r)]} B)"
        for r in records
        if "error" not in r and spill_bytes(r) and config_key(r) in ACCEPTED_SPILLS and not problems(r)
    ]
    meta = {
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "triton": triton.__version__, "torch": torch.__version__, "ptxas": _ptxas_versions(),
        "compiles": len(records), "wall_s": round(payload["wall_s"], 1), "processes": payload["processes"],
        "cpu_count": os.cpu_count(), "load_avg": list(os.getloadavg()),
        "smem_limit_bytes": {f"sm_{k}": v for k, v in SMEM_LIMIT.items()}, "problems": bad,
        "accepted_spills": accepted,
    }  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "kernels_aot.json", out_dir / "kernels_aot.md"
    json_path.write_text(
        json.dumps({"meta": meta, "summary": rows, "records": records}, separators=(",", ":"))
    )
    lines = [
        "# Triton kernels compiled ahead of time for sm_80 and sm_90 (no GPU)",
        "",
        f"triton {meta['triton']}, bundled ptxas {meta['ptxas']}; {meta['compiles']} compiles in "
        f"{meta['wall_s']} s with {meta['processes']} processes on {meta['cpu_count']} shared CPU cores "
        f"(load average {', '.join(f'{x:.1f}' for x in meta['load_avg'])} after the run). Command: "
        "`python bench/aot_compile.py`; the CI test is `tests/kernels/test_aot_compile.py`.",
        "",
        "Each row: the worst case over the flag combinations (GATHER / HAS_PREV / HAS_CGATE for the injection, "
        "COMPUTE_GRAD for the CE step) of one (kernel, target, dtype, BLOCK, num_warps) configuration; "
        "BLOCK and num_warps are what the launchers choose (`_launch_config`, `_block_v`). Registers, "
        "stack and spills from `ptxas -v`; shared memory = static (ptxas) + dynamic (Triton metadata), "
        f"limit {SMEM_LIMIT[80]} B on sm_80, {SMEM_LIMIT[90]} B on sm_90.",
        "",
        "| kernel | target | dtype | BLOCK | warps | variants | errors | max regs (flags) | max spill B | stack B | smem B | mma |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kernel']} | {r['target']} | {r['dtype']} | {r['block']} | {r['num_warps']} | {r['variants']} | "
            f"{r['errors']} | {r['max_registers']} ({r['worst_flags']}) | {r['max_spill_bytes']} | "
            f"{r['max_stack_bytes']} | {r['max_smem_bytes']} | {'yes' if r['uses_mma'] else 'no'} |"
        )
    lines += ["", f"## Problems ({len(bad)})", ""]
    lines += [f"* {p}" for p in bad] or [
        "none: every configuration compiles within shared memory, without spills beyond the accepted ones below."
    ]
    lines += ["", f"## Spills accepted for now ({len(accepted)}; `ACCEPTED_SPILLS` in `kernels/aot.py`)", ""]
    lines += [f"* {a}" for a in accepted] or ["none."]
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--jobs", type=int, default=2, help="compile processes")
    args = parser.parse_args(argv)
    payload = run_aot(args.arch, args.jobs)
    json_path, md_path = write_results(payload, args.out)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 1 if payload["returncode"] else 0


if __name__ == "__main__":
    sys.exit(main())
