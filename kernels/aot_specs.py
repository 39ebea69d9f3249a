"""What :mod:`flythinker.kernels.aot` compiles: every Triton kernel's launches, captured from its own launcher.

:data:`SPECS` lists one :class:`KernelSpec` per ``@triton.jit`` kernel (its module attribute, the host
launcher call, and the case grid: dtype x width x flags). :func:`launch_record` calls the launcher on
``meta`` tensors with the kernel replaced by a recorder and returns the launch it would hand Triton;
:func:`launch_signature` turns that launch into Triton's compile signature, constexprs, attributes
and options. Compiling and checking the records is :mod:`flythinker.kernels.aot`'s job.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

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


def launch_record(module_name: str, kernel_attr: str, launch: Callable, case: dict) -> tuple[tuple, dict]:
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


def launch_signature(fn, args: tuple, kwargs: dict) -> tuple[dict, dict, dict, dict]:
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


def optional_flags(module: str, function: str, name: str) -> Callable[[], tuple[bool, ...]]:
    """Grid values for an optional launcher argument: ``(False, True)`` if the launcher takes it, else ``(False,)``.

    Evaluated when the cases are enumerated (the kernel modules import triton: never at import time).
    """

    def values() -> tuple[bool, ...]:
        fn = getattr(importlib.import_module(module), function)
        return (False, True) if name in inspect.signature(fn).parameters else (False,)

    return values


_FLAGS = (False, True)
INJECTION_MODULE = "flythinker.kernels.triton_injection"
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
            "cgate": optional_flags(INJECTION_MODULE, "latent_injection_forward", "channel_gate"),
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
            "cgate": optional_flags(INJECTION_MODULE, "latent_injection_backward", "channel_gate"),
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
