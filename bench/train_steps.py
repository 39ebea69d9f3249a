"""The measured half of bench/bench_train.py: the training-step variants on the same weights and
records (FlyThinker padded / packed, the reference recipe, SFT, the reasoner's forward + backward), one
AdamW, and the interleaved rounds that time them and read their memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from train_memory import profiled_peak_delta, static_bytes
from train_reference import REFERENCE_ROW_LENGTH, ReferenceRecipe, reference_collate

VARIANTS = ("flythinker_padded", "flythinker_packed", "reference", "sft", "reasoner_fwd_bwd")


# ---------------------------------------------------------------------------------------- variants
@dataclass
class Variant:
    """One kind of training step: ``loss()`` builds the graph; ``rows × width`` token slots per step."""

    name: str
    loss: Callable[[], torch.Tensor]
    real_tokens: int
    rows: int
    width: int
    extra: dict[str, Any] = field(default_factory=dict)


def _to(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _shape(batch: Mapping[str, Any]) -> tuple[int, int]:
    rows, width = batch["input_ids"].shape
    return int(rows), int(width)


def build_variants(
    model,
    reasoner_lm,
    features: Sequence[Mapping[str, Any]],
    pad_token_id: int,
    max_length: int,
    row_length: int = REFERENCE_ROW_LENGTH,
    device: torch.device | str = "cpu",
) -> dict[str, Variant]:
    """The five step kinds of the module docstring, on the same ``features``."""
    from flythinker.kernels.linear_cross_entropy import fused_linear_cross_entropy
    from flythinker.modeling.modeling_flythinker import default_position_ids
    from flythinker.train.collators import PackingCollator, PaddingCollator

    device = torch.device(device)
    real = sum(len(f["input_ids"]) for f in features)
    padded = _to(PaddingCollator(pad_token_id)(features), device)
    packed = _to(PackingCollator(max_length, pad_token_id)(features), device)
    ref_batch = _to(reference_collate(features, pad_token_id, row_length), device)
    positions = default_position_ids(padded["attention_mask"], 0, padded["input_ids"].shape[1], device)
    reference = ReferenceRecipe(model.generator, reasoner_lm, model.config.fusion_lambda)

    def sft_loss() -> torch.Tensor:
        hidden = model.generator.get_decoder()(
            input_ids=padded["input_ids"],
            attention_mask=padded["attention_mask"],
            position_ids=positions,
            use_cache=False,
        ).last_hidden_state
        lm_head = model.generator.get_output_embeddings()
        shifted = torch.nn.functional.pad(padded["labels"], (0, 1), value=-100)[:, 1:]
        return fused_linear_cross_entropy(
            hidden.flatten(0, 1), lm_head.weight, shifted.flatten(), getattr(lm_head, "bias", None)
        )

    def reasoner_loss() -> torch.Tensor:
        hidden = model.reasoner(
            input_ids=padded["input_ids"],
            attention_mask=padded["attention_mask"],
            position_ids=positions,
            use_cache=False,
        ).last_hidden_state
        return hidden.float().square().mean()

    return {
        "flythinker_padded": Variant(
            "flythinker_padded", lambda: model(**padded).loss, real, *_shape(padded)
        ),
        "flythinker_packed": Variant(
            "flythinker_packed", lambda: model(**packed).loss, real, *_shape(packed)
        ),
        "reference": Variant("reference", lambda: reference(**ref_batch), real, *_shape(ref_batch)),
        "sft": Variant("sft", sft_loss, real, *_shape(padded)),
        "reasoner_fwd_bwd": Variant("reasoner_fwd_bwd", reasoner_loss, real, *_shape(padded)),
    }


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW with the paper's lr and weight decay over every trainable parameter (tied ones once), in
    its fused implementation: transformers' Trainer default (``adamw_torch_fused``), which ``flythinker
    train`` uses. (torch's plain default, ``foreach``, takes 3-6x longer per step on CPU.)"""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=5e-6, weight_decay=0.025, fused=True)


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Allocate AdamW's moments up front with a zero-gradient, zero-lr step (weights unchanged), so the
    first timed or profiled step is a steady-state step."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    lrs = [group["lr"] for group in optimizer.param_groups]
    for p in params:
        p.grad = torch.zeros_like(p)
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    optimizer.step()
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------------- steps
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_step(variant: Variant, optimizer: torch.optim.Optimizer, device: torch.device) -> dict[str, float]:
    """forward, backward, AdamW step, zero_grad; seconds of each phase and the loss."""
    _sync(device)
    t0 = time.perf_counter()
    loss = variant.loss()
    _sync(device)
    t1 = time.perf_counter()
    loss.backward()
    _sync(device)
    t2 = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _sync(device)
    t3 = time.perf_counter()
    return {
        "forward_s": t1 - t0,
        "backward_s": t2 - t1,
        "optimizer_s": t3 - t2,
        "fwd_bwd_s": t2 - t0,
        "step_s": t3 - t0,
        "loss": float(loss.detach()),
    }


def measured_memory_step(model, variant: Variant, optimizer, device: torch.device) -> tuple[dict, dict]:
    """One step with its peak memory: ``(timings, memory)`` (memory fields in bytes)."""
    static = static_bytes(model, optimizer)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        timings = run_step(variant, optimizer, device)
        peak = torch.cuda.max_memory_allocated(device)
        return timings, {
            "method": "torch.cuda.max_memory_allocated",
            "peak_bytes": peak,
            "peak_above_start_bytes": peak - start,
            "static_bytes": static,
        }
    timings, delta = profiled_peak_delta(lambda: run_step(variant, optimizer, device))
    return timings, {
        "method": "torch.profiler CPU memory events + live parameters/optimizer state",
        "peak_bytes": static + delta,
        "peak_above_start_bytes": delta,
        "static_bytes": static,
    }


def measure(
    model,
    variants: Mapping[str, Variant],
    optimizer,
    device: torch.device,
    repeats: int,
    reference_repeats: int,
    warmup: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Interleaved rounds: ``warmup`` rounds (the first one measures peak memory), then rounds in an
    order rotated by one each time; the reference runs in the first ``reference_repeats`` rounds only."""
    names = list(variants)
    samples: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    warm: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    memory: dict[str, dict[str, Any]] = {}
    for w in range(max(warmup, 1)):
        for name in names:
            if w == 0:
                timings, memory[name] = measured_memory_step(model, variants[name], optimizer, device)
            else:
                timings = run_step(variants[name], optimizer, device)
            warm[name].append(timings)
            log(
                f"warm-up {w + 1} {name:18s} {timings['step_s']:8.2f} s  loss {timings['loss']:.4f}"
                + (f"  peak {memory[name]['peak_bytes'] / 2**20:,.0f} MiB" if w == 0 else "")
            )
    rounds = max(repeats, reference_repeats)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            if r >= (reference_repeats if name == "reference" else repeats):
                continue
            timings = run_step(variants[name], optimizer, device)
            timings["round"] = r
            samples[name].append(timings)
            log(f"round {r + 1}/{rounds} {name:18s} {timings['step_s']:8.2f} s  loss {timings['loss']:.4f}")
    return {"samples": samples, "warmup": warm, "memory": memory}
