"""Peak-memory probes for one training step, used by ``bench_train.py``.

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` — the absolute peak of
  live tensor bytes during the step (weights, gradients, optimizer state and activations).
* CPU: the same quantity from ``torch.profiler`` memory events (``profile_memory=True``): every
  allocation and free of the CPU allocator during the step, in time order; the running sum's maximum
  is the peak *above* the bytes live when the step began, and the absolute peak adds those (the
  parameters and optimizer state, counted directly). Allocator caching and fragmentation are not
  included, so this is the tensor-level peak, comparable to CUDA's number.
* CPU, process level: :func:`read_rss` / :func:`reset_peak_rss` read ``VmRSS`` / ``VmHWM`` from
  ``/proc/self/status`` and reset the high-water mark through ``/proc/self/clear_refs`` (Linux ≥ 4.0),
  falling back to ``resource.getrusage(...).ru_maxrss`` (never reset) elsewhere. ``bench_train.py
  --memory-subprocess`` runs each variant in a fresh child process and reports its peak RSS.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable, Iterable

import torch


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct tensor storages (shared/tied tensors counted once)."""
    seen, total = set(), 0
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        key = (t.untyped_storage().data_ptr(), t.device)
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def static_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Parameters + existing gradients + optimizer state: what lives across steps."""
    tensors = list(model.parameters()) + [p.grad for p in model.parameters() if p.grad is not None]
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return tensor_bytes(tensors)


def profiled_peak_delta(fn: Callable[[], object]) -> tuple[object, int]:
    """Run ``fn`` under ``torch.profiler`` with memory events; return ``(fn(), peak bytes above start)``.

    The peak is the maximum of the running sum of CPU allocation (+) and free (−) events in time order.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return result, peak


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def read_rss() -> int | None:
    """Current resident set size in bytes (``VmRSS``), or ``None`` where ``/proc`` is missing."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def reset_peak_rss() -> bool:
    """Reset the peak-RSS high-water mark to the current RSS; ``False`` where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def read_peak_rss() -> int:
    """Peak resident set size in bytes: ``VmHWM`` (resettable) or ``ru_maxrss`` (since process start)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024
