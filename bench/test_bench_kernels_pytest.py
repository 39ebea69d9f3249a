"""The kernel micro-benchmarks under pytest-benchmark: ``pytest bench/ --benchmark-only``.

Same ops, providers and inputs as ``bench/bench_kernels.py`` (its ``_run_case`` builds every case), one
benchmark group per (op, mode, size) so the table compares the providers side by side:

* ``ours`` — the Triton op on CUDA. On CPU the Triton interpreter is not a speed path: ``ours`` is the
  chunked PyTorch loss for CE and is skipped for the injection (no CPU kernel of ours exists).
* ``eager`` — the PyTorch reference; ``compiled`` — ``torch.compile(reference, dynamic=True)``.

Modes: ``forward`` (under ``no_grad``) and ``full`` (forward + backward). CPU sizes are small (fp32);
GPU sizes are the first ones of ``bench_kernels``' GPU sweep (bf16). Each case runs once before timing
(warm-up; compilation for ``compiled``). The JSON report: ``--benchmark-json PATH``, by default
``bench/results/kernels_pytest_<device>.json`` (``bench/conftest.py``).
"""

from __future__ import annotations

import pytest
import torch

from bench import bench_kernels as bk

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
PROVIDERS = ("ours", "eager", "compiled")
MODES = ("forward", "full")
INJECTION_SIZES = [(4096, 896), (16384, 3584)] if DEVICE == "cuda" else [(1024, 576), (4096, 576)]
CE_SIZES = (
    [(1024, 896, 151936), (4096, 3584, 151936)] if DEVICE == "cuda" else [(256, 576, 8192), (512, 576, 8192)]
)


def _bench(benchmark, op, provider, mode, size):
    if op == "injection" and provider == "ours" and DEVICE == "cpu":
        pytest.skip("no CPU kernel of ours for the injection (the Triton interpreter is not a speed path)")
    run = bk._run_case(op, provider, mode, size, DTYPE, DEVICE)
    run()  # warm-up, and torch.compile's compilation, outside the timing
    benchmark.group = f"{op} {mode} {'x'.join(map(str, size))}"
    benchmark.extra_info.update({"op": op, "provider": provider, "mode": mode, "size": list(size),
                                 "dtype": str(DTYPE), "device": DEVICE})  # fmt: skip
    if DEVICE == "cuda":

        def run_synced():
            run()
            torch.cuda.synchronize()

        benchmark(run_synced)
    else:
        benchmark(run)


@pytest.mark.parametrize("size", INJECTION_SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_injection(benchmark, provider, mode, size):
    _bench(benchmark, "injection", provider, mode, size)


@pytest.mark.parametrize("size", CE_SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_linear_cross_entropy(benchmark, provider, mode, size):
    _bench(benchmark, "ce", provider, mode, size)
