"""What a decoding call may be asked (:class:`DecodeOptions`) and what it then used (:class:`DecodingSettings`).

``generate()`` and ``stream()`` take the fields of :class:`DecodeOptions` as keyword arguments; their
defaults live here and nowhere else. :func:`resolve_settings` merges them with an optional transformers
``GenerationConfig`` (the caller's object, never a checkpoint's hidden one) and the tokenizer, checks
every value, and returns frozen settings that travel with the output. A bad value raises a
``ValueError`` naming the option, the value and what is allowed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from .steps import uses_reserved_cache

SCHEDULES = ("sequential", "concurrent", "threads", "processes", "cuda-streams", "two-device")
# Measured on the 2-core CPU with the SmolLM2-135M pair (bench/results/decode_cpu*.md): processes 62.9 vs
# threads 66.1 ms/token (sequential 108.9, generator alone 61.9). The worker process starts as its own
# module (it never re-imports the caller's ``__main__``), so this default works from plain scripts,
# ``python -c``, notebooks and the REPL; where it cannot start, ``concurrent`` falls back to threads.
CPU_CONCURRENT_DEFAULT = "processes"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class DecodeOptions:
    """The keyword arguments of ``generate()`` / ``stream()``; None = not given (see ``generate``)."""

    schedule: str = "concurrent"
    max_new_tokens: int | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    eos_token_id: int | Sequence[int] | None = None
    pad_token_id: int | None = None
    generation_config: Any = None
    logits_processor: Any = None
    tokenizer: Any = None
    stop_strings: str | Sequence[str] | None = None
    streamer: Any = None
    prefill_chunk: int | None = None
    check_every: int = 8
    shrink_finished: bool = True
    threads: tuple[int, int] | None = None
    compile: bool | str = False
    share_head: bool = True

    @classmethod
    def from_kwargs(cls, caller: str, kwargs: dict) -> DecodeOptions:
        unknown = sorted(set(kwargs) - set(OPTION_NAMES))
        if unknown:
            raise TypeError(
                f"{caller}() got unknown option(s) {unknown}; the options are {list(OPTION_NAMES)}"
            )
        return cls(**kwargs)


OPTION_NAMES = tuple(f.name for f in fields(DecodeOptions))


@dataclass(frozen=True)
class SamplingSettings:
    """The effective token-selection settings (neutral values where an option is off)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off
    seed: int | None = None  # drawn from torch's default RNG (and reported) when sampling without one
    custom_logits_processor: bool = False

    def validate(self) -> SamplingSettings:
        for name in _KNOBS:
            check_knob(name, getattr(self, name))
        if self.seed is not None:
            _integer("seed", self.seed, lambda v: 0 <= v < 2**64, "an integer in [0, 2**64)")
        return self


@dataclass(frozen=True)
class DecodingSettings:
    """Everything that decided the output: token selection, stopping and the schedule."""

    sampling: SamplingSettings
    max_new_tokens: int
    eos_token_id: tuple[int, ...]
    pad_token_id: int
    stop_strings: tuple[str, ...]
    schedule: str  # resolved (``concurrent`` becomes the placement actually used)
    prefill_chunk: int
    check_every: int  # 1 while streaming
    shrink_finished: bool
    threads: tuple[int, int] | None  # (generator, reasoner) CPU threads, None = untouched
    compile: str | None
    generator_device: str
    reasoner_device: str
    static_cache: bool = True  # StaticCache (compile, CUDA) or DynamicCache (CPU eager); see steps.py
    share_head: bool = False  # processes without compile: the worker computes some LM-head rows
    reserved_cache: bool = False  # a DynamicCache with storage reserved for the call (steps.py)


# ------------------------------------------------------------------------------------------ checks
def _fail(name: str, value, allowed: str):
    raise ValueError(f"{name}={value!r} is not allowed: {name} must be {allowed}")


def _real(name: str, value, ok, allowed: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not ok(value)
    ):
        _fail(name, value, allowed)
    return float(value)


def _integer(name: str, value, ok, allowed: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not ok(value):
        _fail(name, value, allowed)
    return int(value)


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        _fail(name, value, "True or False")
    return value


def _token_ids(name: str, value, vocab: int) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, torch.Tensor):
        value = value.flatten().tolist()
    values = tuple(value) if isinstance(value, (list, tuple, set)) else (value,)
    ok = all(not isinstance(v, bool) and isinstance(v, numbers.Integral) and 0 <= v < vocab for v in values)
    if not ok:
        _fail(name, value, f"a token id (or a list of them) in [0, {vocab})")
    return tuple(int(v) for v in values)


def _stop_strings(value) -> tuple[str, ...]:
    if value is None:
        return ()
    values = (
        (value,) if isinstance(value, str) else tuple(value) if isinstance(value, (list, tuple)) else None
    )
    if values is None or not all(isinstance(s, str) and s for s in values):
        _fail("stop_strings", value, "a non-empty string or a list of non-empty strings")
    return values


def check_inputs(input_ids, attention_mask, vocab: int, name: str = "") -> torch.Tensor:
    """Validate [B, T0] left-padded prompts; returns the long attention mask. ``name`` prefixes the
    argument names in messages (``"reasoner_"`` for a reasoner-context model's own prompt)."""
    ids, mask_name = f"{name}input_ids", f"{name}attention_mask"
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype.is_floating_point:
        raise ValueError(
            f"{ids} must be an integer tensor [batch, length], got {getattr(input_ids, 'shape', input_ids)}"
        )
    if input_ids.numel() == 0:
        raise ValueError(f"{ids} is empty (shape {tuple(input_ids.shape)}): every prompt needs >= 1 token")
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab:
        raise ValueError(
            f"{ids} holds token ids in [{low}, {high}], outside both models' vocabulary [0, {vocab})"
        )
    if attention_mask is None:
        return torch.ones_like(input_ids)
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"{mask_name} {tuple(attention_mask.shape)} must match {ids} {tuple(input_ids.shape)}"
        )
    mask = attention_mask.to(torch.long)
    if not bool(mask.any(dim=1).all()):
        raise ValueError(f"every prompt row needs at least one real token (a {mask_name} row is all 0)")
    if not bool(mask[:, -1].all()) or not bool((mask[:, 1:] >= mask[:, :-1]).all()):
        raise ValueError(f"prompts must be left-padded: each {mask_name} row must be 0…0 1…1 and end with 1")
    return mask


# ------------------------------------------------------------------------------------------ resolution
_KNOBS = {  # name: (integer?, allowed, test)
    "temperature": (False, "a finite number > 0 (do_sample=False is greedy)", lambda v: v > 0),
    "top_k": (True, "an integer >= 0 (0 = off)", lambda v: v >= 0),
    "top_p": (False, "a number in (0, 1] (1 = off)", lambda v: 0 < v <= 1),
    "min_p": (False, "a number in [0, 1] (0 = off)", lambda v: 0 <= v <= 1),
    "repetition_penalty": (False, "a finite number > 0 (1 = off)", lambda v: v > 0),
}


def check_knob(name: str, value, label: str | None = None) -> None:
    """Range-check one sampling option (``label``: the name the caller gave it by)."""
    integer, allowed, ok = _KNOBS[name]
    (_integer if integer else _real)(label or name, value, ok, allowed)


def resolve_sampling(generation_config=None, logits_processor=None, **explicit) -> SamplingSettings:
    """Keyword arguments (non-None) override ``generation_config`` fields; unset options are off.

    ``explicit`` keys: do_sample, temperature, top_k, top_p, min_p, repetition_penalty, seed. Every given
    value is checked, also in greedy mode, where the sampling knobs are then reported as off.
    """
    values: dict = {}
    for name in ("do_sample", *_KNOBS):
        value, label = explicit.get(name), name
        if value is None and generation_config is not None:
            value, label = getattr(generation_config, name, None), f"generation_config.{name}"
        if value is None:
            continue
        if name != "do_sample":
            check_knob(name, value, label)
        values[name] = value
    do_sample = _flag("do_sample", values.pop("do_sample", False))
    repetition_penalty = values.get("repetition_penalty", 1.0)
    if not do_sample:  # sampling knobs are inert in greedy mode: report them as off
        values = {}
    seed = explicit.get("seed")
    if seed is not None:
        _integer("seed", seed, lambda v: 0 <= v < 2**64, "an integer in [0, 2**64)")
    if do_sample and seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return SamplingSettings(
        do_sample=do_sample,
        temperature=float(values.get("temperature", 1.0)),
        top_k=int(values.get("top_k", 0) or 0),
        top_p=float(values.get("top_p", 1.0)),
        min_p=float(values.get("min_p", 0.0) or 0.0),
        repetition_penalty=float(repetition_penalty),
        seed=int(seed) if do_sample else None,
        custom_logits_processor=bool(logits_processor),
    ).validate()


def resolve_schedule(schedule, generator_device: torch.device, reasoner_device: torch.device) -> str:
    """``concurrent`` → ``two-device`` / ``cuda-streams`` / the CPU default; the others are checked as given."""
    if schedule not in SCHEDULES:
        _fail("schedule", schedule, f"one of {SCHEDULES}")
    if schedule == "concurrent":
        if reasoner_device != generator_device:
            return "two-device"
        return "cuda-streams" if generator_device.type == "cuda" else CPU_CONCURRENT_DEFAULT
    on_cpu = generator_device.type == "cpu" and reasoner_device.type == "cpu"
    if schedule in ("threads", "processes") and not on_cpu:
        raise ValueError(f"the {schedule} schedule is for CPU models; use cuda-streams or two-device on GPUs")
    if schedule == "cuda-streams" and not (generator_device.type == reasoner_device.type == "cuda"):
        raise ValueError("the cuda-streams schedule needs the model on a CUDA device")
    return schedule


def default_cpu_threads() -> int:
    """Cores available to this process (``sched_getaffinity`` where supported)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def resolve_settings(
    model, input_ids: torch.Tensor, options: DecodeOptions, streaming: bool
) -> DecodingSettings:
    """Merge explicit options > ``generation_config`` > tokenizer, check them all, resolve the schedule."""
    o, config = options, options.generation_config

    def pick(value, name):
        return value if value is not None else getattr(config, name, None) if config is not None else None

    text_config = model.config.get_text_config()
    max_new = pick(o.max_new_tokens, "max_new_tokens")
    if max_new is None and config is not None and getattr(config, "max_length", None) is not None:
        max_new = config.max_length - input_ids.shape[1]
    if max_new is None:
        raise ValueError("max_new_tokens must be given (here or in generation_config); there is no default")
    max_new = _integer("max_new_tokens", max_new, lambda v: v >= 1, "an integer >= 1")
    context = getattr(text_config, "max_position_embeddings", None)
    if context is not None and input_ids.shape[1] + max_new > context:
        raise ValueError(
            f"prompt length {input_ids.shape[1]} + max_new_tokens {max_new} exceeds the generator's "
            f"max_position_embeddings {context}: shorten the prompt or ask for fewer tokens"
        )
    eos = pick(o.eos_token_id, "eos_token_id")
    if eos is None and o.tokenizer is not None:
        eos = o.tokenizer.eos_token_id
    eos = _token_ids("eos_token_id", eos, text_config.vocab_size)
    pad = pick(o.pad_token_id, "pad_token_id")
    if pad is None and o.tokenizer is not None:
        pad = o.tokenizer.pad_token_id
    pad = eos[0] if pad is None and eos else 0 if pad is None else pad
    pad = _integer("pad_token_id", pad, lambda v: v >= 0, "an integer >= 0")
    stops = _stop_strings(pick(o.stop_strings, "stop_strings"))
    if stops and o.tokenizer is None:
        raise ValueError("stop_strings need a tokenizer= to decode the generated tokens")
    if o.logits_processor is not None and not callable(o.logits_processor):
        _fail(
            "logits_processor",
            o.logits_processor,
            "a LogitsProcessorList (or a callable (ids, scores) -> scores)",
        )
    if o.streamer is not None and not (hasattr(o.streamer, "put") and hasattr(o.streamer, "end")):
        _fail("streamer", o.streamer, "an object with put() and end(), like transformers' TextStreamer")
    knobs = ("do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed")
    sampling = resolve_sampling(config, o.logits_processor, **{name: getattr(o, name) for name in knobs})

    generator_device = model.generator.get_input_embeddings().weight.device
    reasoner_device = next(model.reasoner.parameters()).device
    schedule = resolve_schedule(o.schedule, generator_device, reasoner_device)
    split = None
    if o.threads is not None:
        if not (isinstance(o.threads, (tuple, list)) and len(o.threads) == 2):
            _fail("threads", o.threads, "a pair (generator threads, reasoner threads) of integers >= 1")
        if not all(not isinstance(t, bool) and isinstance(t, numbers.Integral) and t >= 1 for t in o.threads):
            _fail("threads", o.threads, "a pair (generator threads, reasoner threads) of integers >= 1")
        split = (int(o.threads[0]), int(o.threads[1]))
    if schedule in ("threads", "processes") and split is None:
        total = default_cpu_threads()
        split = (max(1, total - total // 2), max(1, total // 2))
    chunk = o.prefill_chunk
    if chunk is None:  # processes: each side prefills alone with every core (see ProcessRunner)
        chunk = input_ids.shape[1] if schedule in ("sequential", "processes") else 256
    chunk = _integer("prefill_chunk", chunk, lambda v: v >= 1, "an integer >= 1 (or None)")
    check_every = _integer("check_every", o.check_every, lambda v: v >= 1, "an integer >= 1")
    compile_mode = None
    if o.compile is not False and o.compile is not None:
        if o.compile is True:
            compile_mode = "reduce-overhead" if generator_device.type == "cuda" else "default"
        elif o.compile in COMPILE_MODES:
            compile_mode = o.compile
        else:
            _fail("compile", o.compile, f"True, False or one of {COMPILE_MODES}")
    static = compile_mode is not None or "cuda" in (generator_device.type, reasoner_device.type)
    return DecodingSettings(
        sampling=sampling,
        max_new_tokens=max_new,
        eos_token_id=eos,
        pad_token_id=pad,
        stop_strings=stops,
        schedule=schedule,
        prefill_chunk=chunk,
        check_every=1 if streaming else check_every,
        shrink_finished=_flag("shrink_finished", o.shrink_finished),
        threads=split if schedule in ("threads", "processes") else None,  # untouched otherwise
        compile=compile_mode,
        generator_device=str(generator_device),
        reasoner_device=str(reasoner_device),
        static_cache=static,
        share_head=_flag("share_head", o.share_head) and schedule == "processes" and compile_mode is None,
        reserved_cache=uses_reserved_cache(input_ids.shape[1] + max_new, static),
    )
