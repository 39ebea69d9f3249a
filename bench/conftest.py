"""pytest-benchmark setup for ``pytest bench/ --benchmark-only`` (never collected by the core ``pytest`` run,
whose ``testpaths`` is ``tests``).

Without ``--benchmark-json``, the JSON report goes to ``bench/results/kernels_pytest_<device>.json``;
the machine info in it also names the torch / triton versions and the GPU (if any).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_tag() -> str:
    if torch.cuda.is_available():
        return "cuda_" + torch.cuda.get_device_name().replace(" ", "_")
    return "cpu"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # tryfirst: runs before pytest-benchmark's own pytest_configure reads the option.
    if getattr(config.option, "benchmark_json", "absent") is None and not config.option.benchmark_disable:
        RESULTS.mkdir(exist_ok=True)
        config.option.benchmark_json = RESULTS / f"kernels_pytest_{device_tag()}.json"


def pytest_benchmark_update_machine_info(config, machine_info):
    from bench.bench_kernels import _device_name, _versions

    machine_info["device"] = _device_name("cuda" if torch.cuda.is_available() else "cpu")
    machine_info["versions"] = _versions()
    machine_info["torch_threads"] = torch.get_num_threads()
