"""flythinker.kernels.host_memory: glibc malloc keeps freed host memory once asked (and only then).

Each check runs in a fresh interpreter, because the setting is process-wide and one-way.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from flythinker.kernels.host_memory import _glibc, keep_freed_host_memory

pytestmark = pytest.mark.skipif(_glibc() is None, reason="needs glibc malloc")

# mallinfo2().hblkhd = bytes currently held in mmap'd blocks (glibc >= 2.33).
_PROBE = textwrap.dedent(
    """
    import ctypes, json, sys
    import torch
    from flythinker.kernels.host_memory import keep_freed_host_memory, host_memory_settings

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    applied = keep_freed_host_memory() if sys.argv[1] == "tuned" else None
    before = libc.mallinfo2().hblkhd
    block = torch.empty(4 << 20, dtype=torch.float32)  # 16 MiB
    during = libc.mallinfo2().hblkhd
    del block
    print(json.dumps({"applied": applied, "mmapped": during - before, "settings": host_memory_settings()}))
    """
)


def _probe(mode: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_16_mib_block_comes_from_mmap_by_default_and_from_the_heap_once_tuned():
    default, tuned = _probe("default"), _probe("tuned")
    assert default["mmapped"] >= 16 << 20  # glibc's default: a fresh mmap (page faults on first touch)
    assert default["settings"] is None
    assert tuned["applied"] is True
    assert tuned["mmapped"] == 0  # served from the reusable heap
    assert tuned["settings"] == {
        "M_MMAP_THRESHOLD": 32 << 20,
        "M_TRIM_THRESHOLD": -1,  # never trim
        "M_TOP_PAD": 256 << 20,
    }


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mmap_threshold": (32 << 20) + 1}, "ceiling"),
        ({"trim_threshold": -1}, "trim_threshold"),
        ({"top_pad": 2**31}, "top_pad"),
        ({"top_pad": 1.5}, "top_pad"),
    ],
)
def test_bad_sizes_are_refused_before_anything_changes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keep_freed_host_memory(**kwargs)
