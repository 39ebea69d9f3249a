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

To cover a new kernel or a changed signature, edit :data:`SPECS` (the launcher call and the case grid).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import itertools
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import torch

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

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_TORCH_TO_TRITON = {
    torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64",
    torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
    torch.bool: "i1",
}  # fmt: skip

#: Generator widths d_G: the SmolLM2 / Qwen2.5 / Llama family (576 .. 8192), plus 16384 for the largest
#: injection block; together they reach every (BLOCK, num_warps) pair ``_launch_config`` returns for them.
INJECTION_WIDTHS = (64, 576, 896, 2048, 3584, 5120, 8192, 16384)
#: Vocabulary sizes: tiny test models (96), powers of two up to the 32768 cap, and real vocabularies
#: (SmolLM2 49152, Llama-2 32000, Llama-3 128256, Qwen2.5 151936) which all hit BLOCK_V = 32768.
CE_VOCABS = (96, 1024, 2048, 4096, 8192, 16384, 32000, 49152, 151936)


# ------------------------------------------------------------------------------------ launch capture
class _Captured(Exception):
    """Raised by the recorder to stop the launcher right at the kernel launch."""


class _Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kwargs)`` records and stops."""

    def __init__(self, fn):
        self.fn = fn
        self.launch: tuple | None = None

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launch = (args, kwargs)
            raise _Captured

        return launch


def _meta(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def _record(module_name: str, kernel_attr: str, launch: Callable, case: dict) -> tuple[tuple, dict]:
    """Run ``launch(module, case)`` with ``module.kernel_attr`` replaced by a recorder."""
    module = importlib.import_module(module_name)
    fn = getattr(module, kernel_attr)
    recorder = _Recorder(fn)
    saved = {
        name: getattr(module, name) for name in (kernel_attr, "check_kernel_device") if hasattr(module, name)
    }
    setattr(module, kernel_attr, recorder)
    if "check_kernel_device" in saved:
        module.check_kernel_device = lambda *a, **k: None  # meta tensors stand in for CUDA ones
    try:
        launch(module, case)
    except _Captured:
        pass
    finally:
        for name, value in saved.items():
            setattr(module, name, value)
    if recorder.launch is None:
        raise RuntimeError(
            f"kernels/aot.py: the launcher for {module_name}.{kernel_attr} returned without launching it "
            f"for case {case}; fix the case grid or the launcher call in SPECS"
        )
    return recorder.launch


_LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def _signature(fn, args: tuple, kwargs: dict) -> tuple[dict, dict, dict, dict]:
    """(signature, constexprs, attrs, options) for one recorded launch of ``fn``."""
    names = list(fn.arg_names)
    const_flags = [p.is_constexpr for p in fn.params]
    values = dict(zip(names, args))
    options = {k: kwargs[k] for k in _LAUNCH_OPTIONS if k in kwargs}
    values.update({k: v for k, v in kwargs.items() if k not in _LAUNCH_OPTIONS})
    signature: dict = {}
    constexprs: dict = {}
    attrs: dict = {}
    for i, (name, is_const) in enumerate(zip(names, const_flags)):
        if name not in values:
            default = fn.params[i].default
            if default is inspect.Parameter.empty:
                raise RuntimeError(
                    f"kernels/aot.py: the {fn.__name__} launch lacks argument {name!r}; update SPECS"
                )
            values[name] = default
        value = values[name]
        if is_const:
            signature[name] = "constexpr"
            constexprs[name] = value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _TORCH_TO_TRITON[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        elif value is None:
            signature[name] = "constexpr"
            constexprs[name] = None
        else:
            raise TypeError(f"kernels/aot.py: cannot type argument {name!r}={value!r} of {fn.__name__}")
    return signature, constexprs, attrs, options


# ------------------------------------------------------------------------------------ the spec table
@dataclass(frozen=True)
class KernelSpec:
    """One ``@triton.jit`` kernel: where it lives, how its launcher is called, and the case grid.

    ``launch(module, case)`` calls the module's host launcher with ``meta`` tensors built from ``case``
    (the recorder stops it at the kernel launch); ``grid`` maps case keys to the values to sweep.
    """

    name: str
    module: str
    kernel: str
    launch: Callable[[object, dict], None]
    grid: dict = field(default_factory=dict)

    def cases(self) -> Iterable[dict]:
        keys = list(self.grid)
        values = [v() if callable(v) else v for v in self.grid.values()]
        for combo in itertools.product(*values):
            yield dict(zip(keys, combo))


def _injection_fwd(mod, case: dict) -> None:
    dt = DTYPES[case["dtype"]]
    d_g = case["d_g"]
    batch, seq, vocab = 2, 8, 128
    hid = _meta(batch, seq, d_g, dtype=dt)
    gate = _meta(batch, seq, dtype=torch.float32)
    prev = _meta(batch, d_g, dtype=dt) if case["has_prev"] else None
    extra = {"channel_gate": _meta(d_g, dtype=torch.float32)} if case.get("cgate") else {}
    if case["gather"]:
        ids, table = _meta(batch, seq, dtype=torch.int64), _meta(vocab, d_g, dtype=dt)
        mod.latent_injection_forward(None, ids, table, hid, gate, 1.0, 0.5, 1e-6, prev, **extra)
    else:
        embeds = _meta(batch, seq, d_g, dtype=dt)
        mod.latent_injection_forward(embeds, None, None, hid, gate, 1.0, 0.5, 1e-6, prev, **extra)


def _injection_bwd(mod, case: dict) -> None:
    dt = DTYPES[case["dtype"]]
    d_g = case["d_g"]
    batch, seq, vocab = 2, 8, 128
    dout = _meta(batch, seq, d_g, dtype=dt)
    scale = _meta(batch * seq, dtype=torch.float32)
    ids = _meta(batch, seq, dtype=torch.int64) if case["gather"] else None
    prev_dtype = dt if case["has_prev"] else None
    extra = {}
    if case.get("cgate"):
        extra = {
            "reasoner_hidden": _meta(batch, seq, d_g, dtype=dt),
            "prev_hidden": _meta(batch, d_g, dtype=dt) if case["has_prev"] else None,
            "channel_gate": _meta(d_g, dtype=torch.float32),
        }
    mod.latent_injection_backward(
        dout, scale, dt, d_g, prev_dtype, input_ids=ids, num_embeddings=vocab, **extra
    )


def _ce_step(mod, case: dict) -> None:
    dt = DTYPES[case["dtype"]]
    rows, vocab = 16, case["vocab"]
    logits = _meta(rows, vocab, dtype=dt)
    labels = _meta(rows, dtype=torch.int64)
    mod.ce_chunk_step_triton(
        logits, labels, _meta(rows, dtype=torch.float32), _meta(1, dtype=torch.float32), -100, case["grad"]
    )


def _optional(module: str, function: str, name: str) -> Callable[[], tuple[bool, ...]]:
    """Grid values for an optional launcher argument: ``(False, True)`` if the launcher takes it, else ``(False,)``.

    Evaluated when the cases are enumerated (the kernel modules import triton: never at import time).
    """

    def values() -> tuple[bool, ...]:
        fn = getattr(importlib.import_module(module), function)
        return (False, True) if name in inspect.signature(fn).parameters else (False,)

    return values


_FLAGS = (False, True)
_INJ = "flythinker.kernels.triton_injection"
SPECS: list[KernelSpec] = [
    KernelSpec(
        "latent_injection_fwd",
        "flythinker.kernels.triton_injection",
        "_latent_injection_fwd_kernel",
        _injection_fwd,
        {
            "dtype": tuple(DTYPES),
            "d_g": INJECTION_WIDTHS,
            "gather": _FLAGS,
            "has_prev": _FLAGS,
            "cgate": _optional(_INJ, "latent_injection_forward", "channel_gate"),
        },
    ),
    KernelSpec(
        "latent_injection_bwd",
        "flythinker.kernels.triton_injection",
        "_latent_injection_bwd_kernel",
        _injection_bwd,
        {
            "dtype": tuple(DTYPES),
            "d_g": INJECTION_WIDTHS,
            "gather": _FLAGS,
            "has_prev": _FLAGS,
            "cgate": _optional(_INJ, "latent_injection_backward", "channel_gate"),
        },
    ),
    KernelSpec(
        "ce_chunk",
        "flythinker.kernels.triton_linear_cross_entropy",
        "_ce_chunk_kernel",
        _ce_step,
        {"dtype": tuple(DTYPES), "vocab": CE_VOCABS, "grad": _FLAGS},
    ),
]


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
            args, kwargs = _record(spec.module, spec.kernel, spec.launch, case)
            signature, constexprs, attrs, options = _signature(fn, args, kwargs)
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
