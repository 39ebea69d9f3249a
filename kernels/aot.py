"""Ahead-of-time compilation of every Triton kernel for real GPU targets, on a machine without a GPU.

For each entry of :data:`SPECS` (one ``@triton.jit`` kernel, named by module attribute) and each case
of its grid (dtype x width x flags), the module's own host launcher is called on ``meta`` tensors with
the kernel replaced by a recorder. The recorded launch (argument dtypes, integer values, constexprs,
``num_warps``) is exactly what the launcher would hand Triton on a GPU, so block sizes and warp counts
come from the launcher's own helpers (``_launch_config``, ``_block_v``), never from a copy here. Each
recorded launch is then compiled for every target::

    triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", cc, 32),
                   options={"num_warps": w, ...})

``signature`` maps every non-constexpr argument to ``*<dtype>`` (tensors) or ``i32`` / ``i64``
(integers); ``attrs`` marks tensors (torch allocations are 16-byte aligned) and integers divisible by 16
with ``tt.divisibility=16``, as Triton's JIT specialises them at launch. No driver is touched:
the PTX goes through Triton's bundled ``ptxas -v``, whose log (``TRITON_DUMP_PTXAS_LOG=1``,
``TRITON_ALWAYS_COMPILE=1`` so it always runs) gives registers, stack frame, spill stores/loads and
static shared memory; Triton's metadata gives the dynamic shared memory (``metadata.shared``).

Pass/fail contract (:func:`problems`): a record fails on a compile error, any spill byte (stores or
loads) beyond the few measured ones listed in :data:`ACCEPTED_SPILLS` (each with its fix, to be
removed when the kernel changes), or static + dynamic shared memory above the per-block limit of the
target (:data:`SMEM_LIMIT`: 163 KiB on sm_80 / A100, 227 KiB on sm_90 / H100).

The kernel modules must be imported with ``TRITON_INTERPRET`` unset (else ``@triton.jit`` yields
interpreter objects that cannot be compiled): use the command line, which runs in its own process::

    python -m flythinker.kernels.aot --arch 80 90 --jobs 2 --json out.json

To cover a new kernel or a changed signature, edit :data:`~flythinker.kernels.aot_specs.SPECS` (the
launcher call and the case grid).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor

import torch

from flythinker.kernels.aot_specs import (
    DTYPES,
    SPECS,
    KernelSpec,
    launch_record,
    launch_signature,
)

__all__ = [
    "KernelSpec",
    "SPECS",
    "SMEM_LIMIT",
    "DTYPES",
    "enumerate_jobs",
    "compile_job",
    "compile_all",
    "problems",
    "config_key",
    "ACCEPTED_SPILLS",
]

#: Max shared memory per block (opt-in) in bytes: A100 163 KiB, H100 227 KiB (CUDA programming guide).
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
#: Max 32-bit registers per thread.
REG_LIMIT = 255

# ------------------------------------------------------------------------------------ jobs
_TL_DTYPE_NAMES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "int1")


def _encode(value):
    """Constexpr values as JSON-able, picklable data (tl.dtype -> 'tl.<name>')."""
    import triton.language as tl

    if isinstance(value, tl.dtype):
        for name in _TL_DTYPE_NAMES:
            if getattr(tl, name) == value:
                return f"tl.{name}"
        raise TypeError(f"kernels/aot.py: add {value} to _TL_DTYPE_NAMES")
    return value


def _decode(value):
    import triton.language as tl

    if isinstance(value, str) and value.startswith("tl."):
        return getattr(tl, value[3:])
    return value


def enumerate_jobs(specs: list[KernelSpec] | None = None, archs: Iterable[int] = (80, 90)) -> list[dict]:
    """One job per (kernel, case, arch); identical launches (same signature/constexprs/options) merged."""
    _require_compiled_mode()
    jobs: list[dict] = []
    seen: dict = {}
    for spec in specs or SPECS:
        module = importlib.import_module(spec.module)
        fn = getattr(module, spec.kernel)
        for case in spec.cases():
            args, kwargs = launch_record(spec.module, spec.kernel, spec.launch, case)
            signature, constexprs, attrs, options = launch_signature(fn, args, kwargs)
            constexprs = {k: _encode(v) for k, v in constexprs.items()}
            for arch in archs:
                key = json.dumps(
                    [spec.name, arch, signature, constexprs, sorted(attrs), options], sort_keys=True
                )
                if key in seen:
                    seen[key]["cases"].append(case)
                    continue
                job = {
                    "kernel": spec.name, "module": spec.module, "attr": spec.kernel, "arch": arch,
                    "signature": signature, "constexprs": constexprs,
                    "attrs": [[list(k), v] for k, v in attrs.items()], "options": options, "cases": [case],
                }  # fmt: skip
                seen[key] = job
                jobs.append(job)
    return jobs


def _require_compiled_mode() -> None:
    if os.environ.get("TRITON_INTERPRET", "").strip().lower() in {"1", "true", "yes", "on"}:
        raise RuntimeError(
            "kernels/aot.py needs TRITON_INTERPRET unset (the kernels must be decorated for compilation); "
            "run `python -m flythinker.kernels.aot` in a process without it"
        )


_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas_log(log: str) -> dict:
    """Registers / static smem / stack frame / spill bytes from a ``ptxas -v`` log (one kernel)."""
    used = _PTXAS_USED.search(log)
    frame = _PTXAS_FRAME.search(log)
    smem = _PTXAS_SMEM.search(log)
    if used is None or frame is None:
        raise RuntimeError(f"kernels/aot.py: no register/spill line in the ptxas log:\n{log}")
    return {
        "registers": int(used.group(1)),
        "stack_frame_bytes": int(frame.group(1)),
        "spill_store_bytes": int(frame.group(2)),
        "spill_load_bytes": int(frame.group(3)),
        "static_smem_bytes": int(smem.group(1)) if smem else 0,
    }


def compile_job(job: dict) -> dict:
    """Compile one job for its target; returns the job's record with resources or ``error``."""
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"
    _require_compiled_mode()
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(job["module"]), job["attr"])
    record = {k: job[k] for k in ("kernel", "arch", "signature", "constexprs", "options", "cases")}
    constexprs = {k: _decode(v) for k, v in job["constexprs"].items()}
    attrs = {tuple(k): v for k, v in job["attrs"]}
    src = ASTSource(fn=fn, signature=job["signature"], constexprs=constexprs, attrs=attrs)
    start = time.perf_counter()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=GPUTarget("cuda", job["arch"], 32), options=job["options"])
    except Exception as exc:  # noqa: BLE001 - every compile failure is a result to report
        record["error"] = f"{type(exc).__name__}: {exc}"[:4000]
        record["compile_s"] = time.perf_counter() - start
        return record
    record["compile_s"] = time.perf_counter() - start
    record.update(parse_ptxas_log(log.getvalue()))
    md = compiled.metadata
    record["dynamic_smem_bytes"] = int(md.shared)
    record["smem_bytes"] = record["static_smem_bytes"] + record["dynamic_smem_bytes"]
    record["num_warps"] = int(md.num_warps)
    record["num_stages"] = int(md.num_stages)
    record["target"] = str(md.arch) if hasattr(md, "arch") else f"sm_{job['arch']}"
    record["ptx_bytes"] = len(compiled.asm["ptx"])
    record["cubin_bytes"] = len(compiled.asm["cubin"])
    record["uses_mma"] = bool(re.search(r"\b(mma|wgmma)\.", compiled.asm["ptx"]))
    return record


def _init_worker() -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    torch.set_num_threads(1)


def compile_all(jobs: list[dict], processes: int = 2) -> list[dict]:
    """Compile every job (in ``processes`` worker processes when > 1), in job order."""
    with tempfile.TemporaryDirectory(prefix="flythinker-aot-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        if processes <= 1:
            return [compile_job(j) for j in jobs]
        import multiprocessing as mp

        with ProcessPoolExecutor(
            processes, mp_context=mp.get_context("spawn"), initializer=_init_worker
        ) as pool:
            return list(pool.map(compile_job, jobs, chunksize=1))


#: Spills the contract tolerates: ``config_key`` -> most spill bytes (stores + loads) accepted. Empty:
#: the launchers' choices (≤ 16 elements per thread in the injection, BLOCK_V ≤ 16384 in the CE step)
#: compile spill-free for sm_80 and sm_90; any spill fails.
ACCEPTED_SPILLS: dict[str, int] = {}


def config_key(record: dict) -> str:
    """``"<kernel> sm_<cc> <dtype> BLOCK=<n> <true flags> warps=<w>"``: one compiled configuration."""
    dtype = next((v[1:] for v in record.get("signature", {}).values() if v.startswith("*")), "?")
    const = record["constexprs"]
    blocks = " ".join(f"{k}={v}" for k, v in sorted(const.items()) if k.startswith("BLOCK"))
    flags = ",".join(sorted(k for k, v in const.items() if v is True)) or "-"
    return f"{record['kernel']} sm_{record['arch']} {dtype} {blocks} {flags} warps={record['options'].get('num_warps')}"


def spill_bytes(record: dict) -> int:
    return record.get("spill_store_bytes", 0) + record.get("spill_load_bytes", 0)


def problems(record: dict, accepted: dict[str, int] | None = None) -> list[str]:
    """Why a record fails the contract: compile error, a spill (beyond ``accepted``, default
    :data:`ACCEPTED_SPILLS`; pass ``{}`` for none), shared memory above the target's limit."""
    accepted = ACCEPTED_SPILLS if accepted is None else accepted
    where = config_key(record)
    if "error" in record:
        return [f"{where}: compile error {record['error'][:300]}"]
    out = []
    spills = spill_bytes(record)
    if spills and spills > accepted.get(where, 0):
        out.append(
            f"{where}: {record['spill_store_bytes']} B spill stores, {record['spill_load_bytes']} B spill loads"
        )
    if record["smem_bytes"] > SMEM_LIMIT[record["arch"]]:
        out.append(f"{where}: {record['smem_bytes']} B shared memory > {SMEM_LIMIT[record['arch']]} B limit")
    if record["registers"] > REG_LIMIT:
        out.append(f"{where}: {record['registers']} registers > {REG_LIMIT}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="AOT-compile every flythinker Triton kernel configuration.")
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--kernel", nargs="*", help="only these spec names")
    parser.add_argument("--json", help="write the records (a list) to this file")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    specs = [s for s in SPECS if not args.kernel or s.name in args.kernel]
    start = time.perf_counter()
    jobs = enumerate_jobs(specs, args.arch)
    records = compile_all(jobs, args.jobs)
    wall = time.perf_counter() - start
    payload = {"wall_s": wall, "processes": args.jobs, "records": records}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
    bad = [p for r in records for p in problems(r)]
    print(f"{len(records)} compiles in {wall:.1f} s, {len(bad)} problems", file=sys.stderr)
    for p in bad:
        print(p, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
