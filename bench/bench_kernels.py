"""Micro-benchmarks of the fused kernels (docs/design.md §4, issue 3).

One command runs everything and writes ``kernels_<device>.json`` / ``.csv`` / ``.png`` to ``--out``::

    python bench/bench_kernels.py --op all --out bench/results/

Per op and size, side by side in one run:

* providers — ``ours`` (the Triton op on CUDA; on CPU the Triton interpreter is not a speed path, so
  ``ours`` is the chunked PyTorch loss for CE and is absent for the injection), ``eager`` (the PyTorch
  reference), ``compiled`` (``torch.compile`` of the reference, ``dynamic=True`` so one compilation
  covers the sweep), and for the CE on CUDA ``liger`` (Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss``)
  when ``liger_kernel`` is installed (``make gpu-check`` installs the pinned version);
* modes — ``forward`` and ``full`` (forward + backward with a random upstream gradient);
* metrics — median / p20 / p80 time in ms (``triton.testing.do_bench`` on GPU,
  ``torch.utils.benchmark.Timer`` on CPU); for the memory-bound injection, achieved GB/s = bytes
  that must move / time, and its fraction of the measured device copy rate of the same bytes
  (``dst.copy_(src)``, counted as read + write); peak memory in MB above the inputs
  (``torch.cuda.max_memory_allocated`` on GPU; on CPU the running maximum of the allocation / free
  events ``torch.profiler(profile_memory=True)`` records during one forward + backward, after a warm-up).

Sweep: GPU tokens 1k–64k, width 896–4096, vocab 32k–152k (bf16); CPU a reduced fp32 sweep
(tokens ≤ 16k for the injection, 2k tokens × 32k vocab × 576 for the loss, the SmolLM2-135M width).
Rows follow Liger-Kernel's benchmark records: op, provider, mode, metric, x_name, x_value, p50/p20/p80, plus
the size parameters, device and versions.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

GPU_INJECTION = [(t, d) for t in (1024, 4096, 16384, 32768, 65536) for d in (896, 3584, 4096)]
GPU_CE = [(t, d, v) for t in (1024, 4096, 8192) for (d, v) in ((896, 151936), (3584, 151936), (4096, 32000))]
CPU_INJECTION = [(t, d) for t in (1024, 4096, 16384) for d in (896, 2048)]
CPU_CE = [(t, 576, 32000) for t in (512, 1024, 2048)]


# ---------------------------------------------------------------------------------------- timing
def _time_ms(fn, device: str) -> tuple[float, float, float]:
    """(p50, p20, p80) in milliseconds."""
    if device == "cuda":
        import triton.testing

        p50, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], warmup=25, rep=100)
        return p50, p20, p80
    from torch.utils import benchmark

    fn()  # warm-up (and compilation for torch.compile providers)
    m = benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.5)
    times = sorted(m.times)

    def q(p):
        return times[min(len(times) - 1, int(p * len(times)))] * 1e3

    return m.median * 1e3, q(0.2), q(0.8)


def _copy_gbps(nbytes: int, device: str) -> float:
    """Measured device copy rate for ``nbytes`` (read + write counted), GB/s."""
    src = torch.empty(max(nbytes // 2, 1), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    p50, _, _ = _time_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() / (p50 * 1e-3) / 1e9


# ---------------------------------------------------------------------------------------- ops
def _injection_inputs(tokens, width, dtype, device, batch=1):
    seq = tokens // batch
    e = torch.randn(batch, seq, width, dtype=dtype, device=device, requires_grad=True)
    h = torch.randn(batch, seq, width, dtype=dtype, device=device, requires_grad=True)
    gate = torch.ones(batch, seq, device=device)
    return (
        e,
        h,
        gate,
        torch.tensor(1.3, device=device),
        torch.randn(batch, seq, width, dtype=dtype, device=device),
    )


def injection_fns(provider: str, device: str):
    from flythinker.kernels.injection import latent_injection_reference

    if provider == "ours":
        from flythinker.kernels.triton_injection_autograd import latent_injection_triton as fn
    elif provider == "eager":
        fn = latent_injection_reference
    else:
        fn = _compiled("injection", latent_injection_reference)
    return fn


def ce_fns(provider: str, device: str):
    from flythinker.kernels.linear_cross_entropy import (
        chunked_linear_cross_entropy,
        linear_cross_entropy_reference,
    )

    if provider == "ours":
        if device == "cuda":
            from flythinker.kernels.triton_linear_cross_entropy import fused_linear_cross_entropy_triton as fn
        else:
            fn = chunked_linear_cross_entropy
    elif provider == "eager":
        fn = linear_cross_entropy_reference
    elif provider == "liger":  # Liger-Kernel's fused linear CE (mean over non-ignored labels, as ours)
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        loss = LigerFusedLinearCrossEntropyLoss(ignore_index=-100, reduction="mean")

        def fn(h, w, y):
            out = loss(w, h, y)
            return out[0] if isinstance(out, tuple) else out
    else:
        fn = _compiled("ce", linear_cross_entropy_reference)
    return fn


def has_liger() -> bool:
    """Liger-Kernel importable (a CE provider on CUDA only: its kernels are Triton)."""
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


_COMPILED: dict = {}


def _compiled(key, fn):
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, dynamic=True)
    return _COMPILED[key]


def _ce_inputs(tokens, width, vocab, dtype, device):
    gen = torch.Generator(device="cpu").manual_seed(0)
    h = torch.randn(tokens, width, generator=gen).to(device, dtype).requires_grad_()
    w = (torch.randn(vocab, width, generator=gen) / width**0.5).to(device, dtype).requires_grad_()
    y = torch.randint(0, vocab, (tokens,), generator=gen).to(device)
    y[::5] = -100
    return h, w, y


def _run_case(op, provider, mode, size, dtype, device):
    """Return a zero-arg callable executing one (op, provider, mode, size)."""
    if op == "injection":
        tokens, width = size
        e, h, gate, m, dout = _injection_inputs(tokens, width, dtype, device)
        fn = injection_fns(provider, device)
        if mode == "forward":

            def run():
                with torch.no_grad():
                    fn(e, h, gate, m, 0.5)
        else:

            def run():
                torch.autograd.grad(fn(e, h, gate, m, 0.5), (e, h), dout)

        return run
    tokens, width, vocab = size
    h, w, y = _ce_inputs(tokens, width, vocab, dtype, device)
    fn = ce_fns(provider, device)
    if mode == "forward":

        def run():
            with torch.no_grad():
                fn(h, w, y)
    else:

        def run():
            torch.autograd.grad(fn(h, w, y), (h, w))

    return run


def _injection_bytes(tokens, width, dtype, mode):
    elt = torch.empty((), dtype=dtype).element_size()
    fwd = 3 * tokens * width * elt  # read e, h; write out  (gate, scale: negligible)
    bwd = 2 * tokens * width * elt  # read dout; write dh   (d e = dout is passed through, no traffic)
    return fwd if mode == "forward" else fwd + bwd


# ---------------------------------------------------------------------------------------- memory
def _peak_mb(op, provider, size, dtype, device):
    if device == "cuda":
        run = _run_case(op, provider, "full", size, dtype, device)
        run()  # warm-up / compile
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    run = _run_case(op, provider, "full", size, dtype, device)
    run()  # warm-up / compile, outside the measurement
    return _cpu_peak_alloc_mb(run)


def _cpu_peak_alloc_mb(run) -> float:
    """Peak of live CPU tensor bytes allocated during ``run()`` (above what was live before), in MB.

    The CPU allocator keeps no peak counter, so this replays the allocator events that
    ``torch.profiler`` records with ``profile_memory=True`` (+bytes on alloc, -bytes on free) in time
    order and takes the running maximum.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20


# ---------------------------------------------------------------------------------------- driver
def _versions():
    info = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("triton", "transformers"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def _device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU: {name} ({os.cpu_count()} cores)"


def benchmark(ops, device, out_dir: Path, quick=False):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    providers = ["ours", "eager", "compiled"] if device == "cuda" else ["eager", "compiled"]
    ce_providers = ["ours", "eager", "compiled"] + (["liger"] if device == "cuda" and has_liger() else [])
    meta = {"device": _device_name(device), "device_kind": device, "versions": _versions(),
            "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "dtype": str(dtype),
            "note": "CPU run: 'ours' for CE = chunked PyTorch loss (Triton interpreter is not a speed path); "
                    "no Triton injection provider on CPU" if device == "cpu" else "GPU run"}  # fmt: skip
    rows = []
    copy_cache: dict = {}

    def add(op, provider, mode, metric, x_name, x_value, vals, params, unit):
        p50, p20, p80 = vals if isinstance(vals, tuple) else (vals, vals, vals)
        rows.append({"op": op, "provider": provider, "mode": mode, "metric": metric, "unit": unit,
                     "x_name": x_name, "x_value": x_value, "p50": p50, "p20": p20, "p80": p80, **params,
                     "device": meta["device"], "dtype": str(dtype)})  # fmt: skip
        print(f"{op:10s} {provider:9s} {mode:8s} {metric:10s} {params} {p50:.4g} {unit}", flush=True)

    if "injection" in ops:
        sizes = CPU_INJECTION if device == "cpu" else GPU_INJECTION
        if quick:
            sizes = sizes[:2]
        for tokens, width in sizes:
            params = {"tokens": tokens, "width": width}
            for mode in ("forward", "full"):
                nbytes = _injection_bytes(tokens, width, dtype, mode)
                if nbytes not in copy_cache:
                    copy_cache[nbytes] = _copy_gbps(nbytes, device)
                add("injection", "copy", mode, "gbps", "tokens", tokens, copy_cache[nbytes], params, "GB/s")
                for provider in providers:
                    vals = _time_ms(
                        _run_case("injection", provider, mode, (tokens, width), dtype, device), device
                    )
                    add("injection", provider, mode, "time", "tokens", tokens, vals, params, "ms")
                    gbps = nbytes / (vals[0] * 1e-3) / 1e9
                    add("injection", provider, mode, "gbps", "tokens", tokens, gbps, params, "GB/s")
                    add(
                        "injection",
                        provider,
                        mode,
                        "copy_frac",
                        "tokens",
                        tokens,
                        gbps / copy_cache[nbytes],
                        params,
                        "",
                    )
            for provider in providers:
                if device == "cuda" or provider != "compiled":
                    add("injection", provider, "full", "peak_mem", "tokens", tokens,
                        _peak_mb("injection", provider, (tokens, width), dtype, device), params, "MB")  # fmt: skip

    if "ce" in ops:
        sizes = CPU_CE if device == "cpu" else GPU_CE
        if quick:
            sizes = sizes[:1]
        for tokens, width, vocab in sizes:
            params = {"tokens": tokens, "width": width, "vocab": vocab}
            for mode in ("forward", "full"):
                for provider in ce_providers:
                    vals = _time_ms(
                        _run_case("ce", provider, mode, (tokens, width, vocab), dtype, device), device
                    )
                    add("ce", provider, mode, "time", "tokens", tokens, vals, params, "ms")
            for provider in ce_providers:
                peak = _peak_mb("ce", provider, (tokens, width, vocab), dtype, device)
                if peak is not None:
                    add("ce", provider, "full", "peak_mem", "tokens", tokens, peak, params, "MB")

    summary = _summarise(rows)
    tag = "cuda_" + torch.cuda.get_device_name().replace(" ", "_") if device == "cuda" else "cpu"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"kernels_{tag}"
    stem.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1)
    )
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, meta, stem.with_suffix(".png"))
    print(json.dumps(summary, indent=1))
    return stem


def _summarise(rows):
    """Ratios per size: speed-up of ours vs eager / compiled, peak memory ours / eager (and compiled / eager)."""
    out = []
    key = ("op", "mode", "tokens", "width", "vocab")
    groups: dict = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in key), []).append(r)
    for k, rs in groups.items():
        by = {(r["provider"], r["metric"]): r["p50"] for r in rs}
        entry = dict(zip(key, k))
        if ("eager", "time") in by:
            for p in ("ours", "compiled"):
                if (p, "time") in by:
                    entry[f"speedup_{p}_vs_eager"] = by[("eager", "time")] / by[(p, "time")]
            for p in ("compiled", "liger"):
                if ("ours", "time") in by and (p, "time") in by:
                    entry[f"speedup_ours_vs_{p}"] = by[(p, "time")] / by[("ours", "time")]
        for p in ("ours", "compiled", "eager"):
            if (p, "copy_frac") in by:
                entry[f"copy_frac_{p}"] = by[(p, "copy_frac")]
        if ("eager", "peak_mem") in by:
            entry["peak_mem_eager_mb"] = by[("eager", "peak_mem")]
            for p in ("ours", "compiled", "liger"):
                if (p, "peak_mem") in by:
                    entry[f"peak_mem_{p}_mb"] = by[(p, "peak_mem")]
                    entry[f"peak_mem_ratio_{p}_vs_eager"] = by[(p, "peak_mem")] / max(
                        by[("eager", "peak_mem")], 1e-9
                    )
        if len(entry) > len(key):
            out.append({k2: v for k2, v in entry.items() if v is not None})
    return out


def _plot(rows, meta, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("injection", "full", "time"),
        ("injection", "full", "gbps"),
        ("ce", "full", "time"),
        ("ce", "full", "peak_mem"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (op, mode, metric) in zip(axes, panels):
        sel = [r for r in rows if r["op"] == op and r["mode"] == mode and r["metric"] == metric]
        series: dict = {}
        for r in sel:
            label = r["provider"] + (
                f" d={r['width']}" if op == "injection" else f" d={r['width']} V={r['vocab']}"
            )
            series.setdefault(label, []).append((r["x_value"], r["p50"]))
        for label, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens")
        ax.set_ylabel({"time": "ms (median)", "gbps": "GB/s", "peak_mem": "peak MB"}[metric])
        ax.set_title(f"{op} {mode} {metric}")
        if series:
            ax.legend(fontsize=6)
    fig.suptitle(f"{meta['device']} | torch {meta['versions']['torch']} triton {meta['versions']['triton']} "
                 f"transformers {meta['versions']['transformers']} | {meta['dtype']}", fontsize=8)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--op", choices=["injection", "ce", "all"], default="all")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--quick", action="store_true", help="first sizes only (smoke test)")
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    ops = ["injection", "ce"] if args.op == "all" else [args.op]
    benchmark(ops, device, args.out, quick=args.quick)


if __name__ == "__main__":
    main()
