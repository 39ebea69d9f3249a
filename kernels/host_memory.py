"""Host (CPU) memory reuse for training and decoding loops: glibc ``malloc`` tuned to keep freed memory.

Why: PyTorch's CPU allocator is the C library's ``malloc``. glibc serves a large block (above a
threshold that starts at 128 KiB and adapts up to 32 MiB) with a fresh ``mmap`` and returns it to
the kernel on ``free``; it also trims the top of its heap once more than twice that threshold is
free. A training step allocates and frees gigabytes of activations and gradients, so every step pays
a page fault (and the kernel's zeroing) for each fresh 4 KiB page its ops write — on the SmolLM2 pair
(two models, larger working set than SFT) that was most of FlyThinker's excess over its floor
(``bench/results/train_cpu_floor.md``).

:func:`keep_freed_host_memory` sets three ``mallopt`` parameters so freed blocks stay in the heap and
are reused, untouched pages included:

* ``M_MMAP_THRESHOLD`` = ``mmap_threshold`` (default 32 MiB, glibc's maximum): blocks below it come from
  the heap (setting it also stops glibc's adaptive threshold);
* ``M_TRIM_THRESHOLD`` = ``trim_threshold`` (default None: never; glibc's ``-1``): the free top of the heap
  is not given back to the kernel (an optimizer step over both models frees more than 2 GiB at once,
  more than any positive ``mallopt`` value can hold);
* ``M_TOP_PAD`` = ``top_pad`` (default 256 MiB): the heap grows in large steps.

Cost: the process's resident memory stays at its high-water mark (the tensors' peak is unchanged).
It changes no result; it is process-wide and applies to allocations made afterwards. flythinker
applies it only in processes it owns or is asked to tune: ``flythinker train`` on CPU (``FinetuneConfig.
keep_freed_host_memory``), the decoding worker process, and the benchmarks. Call it yourself in a
CPU training script of your own. On a C library other than glibc it does nothing and returns False.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MAX_MMAP_THRESHOLD = 32 << 20  # glibc's ceiling on 64-bit (HEAP_MAX_SIZE / 2)
_INT_MAX = 2**31 - 1

_applied: dict[str, int] | None = None


def _glibc():
    """The process's C library if it is glibc (has ``mallopt`` and ``gnu_get_libc_version``), else None."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:  # pragma: no cover - no dynamic C library
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version")):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def keep_freed_host_memory(
    mmap_threshold: int = _MAX_MMAP_THRESHOLD,
    trim_threshold: int | None = None,
    top_pad: int = 256 << 20,
) -> bool:
    """Make glibc ``malloc`` keep and reuse freed host memory (see the module docstring).

    Args:
        mmap_threshold: bytes; blocks smaller than this come from the reusable heap (≤ 32 MiB).
        trim_threshold: bytes of free heap top tolerated before glibc gives memory back; None (the
            default) never gives it back. At most 2**31 - 1 (``mallopt`` takes an ``int``).
        top_pad: bytes added to every heap extension.

    Returns:
        True if all three settings were applied (glibc), False on other C libraries.

    Raises:
        ValueError: a negative size, or ``mmap_threshold`` above glibc's 32 MiB ceiling.
    """
    global _applied
    for name, value in (
        ("mmap_threshold", mmap_threshold),
        ("trim_threshold", 0 if trim_threshold is None else trim_threshold),
        ("top_pad", top_pad),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _INT_MAX:
            raise ValueError(f"{name} must be a number of bytes in [0, 2**31 - 1], got {value!r}")
    if mmap_threshold > _MAX_MMAP_THRESHOLD:
        raise ValueError(
            f"mmap_threshold={mmap_threshold} is above glibc's ceiling of {_MAX_MMAP_THRESHOLD} bytes"
        )
    libc = _glibc()
    if libc is None:
        return False
    settings = {
        "M_MMAP_THRESHOLD": (_M_MMAP_THRESHOLD, mmap_threshold),
        "M_TRIM_THRESHOLD": (_M_TRIM_THRESHOLD, -1 if trim_threshold is None else trim_threshold),
        "M_TOP_PAD": (_M_TOP_PAD, top_pad),
    }
    for name, (param, value) in settings.items():
        if libc.mallopt(param, value) != 1:  # mallopt returns 1 on success
            raise OSError(f"glibc mallopt({name}, {value}) failed")
    _applied = {name: value for name, (_, value) in settings.items()}
    return True


def host_memory_settings() -> dict[str, int] | None:
    """The settings :func:`keep_freed_host_memory` applied in this process (None if it did not run)."""
    return None if _applied is None else dict(_applied)
