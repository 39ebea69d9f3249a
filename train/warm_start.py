"""Warm starts for the injection: λ warm-up, reasoner centring, and the optimizer groups of the gate.

The equations are in :class:`flythinker.modeling.fusion.LatentFusion`; this module only sets the
training-time quantities it reads:

* ``s`` (``fusion.lambda_scale``): ``x̃_i = E_G[x_i] + λ·s·a_{i-1}·P(c ⊙ r_{i-1})`` with
  ``s = min(1, step / N)`` during a warm-up of N optimizer steps (s = 0 at step 0: the base generator);
* ``μ`` (``fusion.reasoner_center``): the mean reasoner state over the real tokens of some training
  batches, so ``r = (h − μ)·m̄/‖h − μ‖`` no longer carries the constant outlier channel;
* the parameters that open a closed start (gate α, a ``zero_linear`` W) may train at a multiple of
  the base learning rate, without weight decay.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "estimate_reasoner_center",
    "set_lambda_scale",
    "lambda_scale_at",
    "warm_start_parameters",
    "optimizer_groups",
    "boost_warm_start_parameters",
    "LambdaWarmupCallback",
    "bake_lambda_scale",
    "init_projection",
]


def _fusion(model: nn.Module):
    fusion = getattr(model, "fusion", None)
    if fusion is None:
        raise TypeError(
            f"{type(model).__name__} has no `fusion` module: warm starts apply to FlyThinker models"
        )
    return fusion


def set_lambda_scale(model: nn.Module, scale: float) -> None:
    """Set ``s`` in [0, 1] (the injection weight is then λ·s)."""
    if (
        isinstance(scale, bool)
        or not isinstance(scale, (int, float))
        or not math.isfinite(scale)
        or not 0 <= scale <= 1
    ):
        raise ValueError(f"lambda scale must be a number in [0, 1], got {scale!r}")
    _fusion(model).lambda_scale = float(scale)


def lambda_scale_at(step: int, warmup_steps: int) -> float:
    """``min(1, step / N)``; 1 when N = 0 (no warm-up)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, max(step, 0) / warmup_steps)


@torch.no_grad()
def estimate_reasoner_center(
    model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], max_batches: int | None = None
) -> torch.Tensor:
    """μ = mean of ``P_pre(h)`` over the real tokens (attention_mask = 1) of ``batches``; stored in
    ``model.fusion.reasoner_center`` and returned. Needs ``center_reasoner=True`` in the config."""
    fusion = _fusion(model)
    if fusion.reasoner_center is None:
        raise ValueError(
            "this model has no reasoner centre: build it with FlyThinkerConfig(center_reasoner=True)"
        )
    was_training = model.training
    model.eval()
    total, count = None, 0
    try:
        for index, batch in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            device = fusion.reasoner_center.device
            if "reasoner_input_ids" in batch:  # reasoner_context: its own left-padded sequence
                batch = {
                    "input_ids": batch["reasoner_input_ids"],
                    "attention_mask": batch["reasoner_attention_mask"],
                    "position_ids": (batch["reasoner_attention_mask"].cumsum(-1) - 1).clamp_min(0),
                }
            input_ids = batch["input_ids"].to(device)
            mask = batch.get("attention_mask")
            mask = torch.ones_like(input_ids) if mask is None else mask.to(device)
            position_ids = batch.get("position_ids")
            given_mask = batch.get("attention_mask")  # packed batches have none (position ids restart)
            hidden = model.reasoner(
                input_ids=input_ids,
                attention_mask=None if given_mask is None else given_mask.to(device),
                position_ids=None if position_ids is None else position_ids.to(device),
            ).last_hidden_state
            states = fusion.projection(hidden) if fusion.projection_mode == "linear" else hidden
            real = mask.bool()
            part = states[real].double().sum(0)
            total = part if total is None else total + part
            count += int(real.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("estimate_reasoner_center got no real tokens (empty batches or all-padding masks)")
    center = (total / count).to(fusion.reasoner_center.dtype)
    fusion.reasoner_center.copy_(center)
    return center


def warm_start_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that open a closed start: the gate α and a ``zero_linear`` projection's W."""
    fusion = _fusion(model)
    params = [fusion.gate_logit] if fusion.gate_logit is not None else []
    if fusion.projection is not None and fusion.projection_mode == "zero_linear":
        params.append(fusion.projection.weight)
    return [p for p in params if p.requires_grad]


def optimizer_groups(
    model: nn.Module, learning_rate: float, weight_decay: float, warm_start_lr_multiplier: float = 1.0
) -> list[dict[str, Any]]:
    """AdamW groups: decayed weights, undecayed biases/norms, and the warm-start parameters at
    ``learning_rate × warm_start_lr_multiplier`` without decay."""
    special = {id(p) for p in warm_start_parameters(model)} if hasattr(model, "fusion") else set()
    decay, no_decay, warm = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in special:
            warm.append(param)
        elif param.dim() < 2 or "norm" in name.lower() or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "lr": learning_rate, "weight_decay": weight_decay},
        {"params": no_decay, "lr": learning_rate, "weight_decay": 0.0},
    ]
    if warm:
        groups.append({"params": warm, "lr": learning_rate * warm_start_lr_multiplier, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def boost_warm_start_parameters(optimizer: torch.optim.Optimizer, model: nn.Module, multiplier: float) -> int:
    """Move the warm-start parameters of a freshly built optimizer into their own group at
    ``lr × multiplier`` without weight decay (the Trainer's other groups stay as they are).

    Call before the first step (the optimizer holds no state yet) and before the LR scheduler is
    built, so the scheduler scales the new group too. Returns how many parameters moved.
    """
    if multiplier == 1.0 or not hasattr(model, "fusion"):
        return 0
    if optimizer.state:
        raise RuntimeError("boost_warm_start_parameters needs an optimizer that has not stepped yet")
    special = {id(p) for p in warm_start_parameters(model)}
    moved: list[nn.Parameter] = []
    for group in optimizer.param_groups:
        keep = [p for p in group["params"] if id(p) not in special]
        moved += [p for p in group["params"] if id(p) in special]
        group["params"] = keep
    if moved:
        base = optimizer.param_groups[0]
        optimizer.add_param_group({**{k: v for k, v in base.items() if k != "params"}, "params": moved,
                                   "lr": base["lr"] * multiplier, "weight_decay": 0.0})  # fmt: skip
        if "initial_lr" in base:
            optimizer.param_groups[-1]["initial_lr"] = base["initial_lr"] * multiplier
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    return len(moved)


def _trainer_callback_base():
    try:
        from transformers import TrainerCallback
    except ImportError:  # pragma: no cover - transformers is a core dependency
        return object
    return TrainerCallback


class LambdaWarmupCallback(_trainer_callback_base()):
    """transformers ``TrainerCallback``: ``s = min(1, global_step / N)`` before every step.

    ``warmup_steps`` is N, or a fraction in (0, 1) of the run's total optimizer steps. At the end of
    training, if the warm-up was not finished, λ·s is written into the config and ``s`` reset to 1, so
    the saved model is the model that was trained.
    """

    def __init__(self, warmup_steps: float):
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.requested = warmup_steps
        self.warmup_steps = int(warmup_steps) if warmup_steps >= 1 or warmup_steps == 0 else 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if 0 < self.requested < 1:
            self.warmup_steps = max(1, round(self.requested * state.max_steps))
        if model is not None:
            set_lambda_scale(model, lambda_scale_at(state.global_step, self.warmup_steps))

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            set_lambda_scale(model, lambda_scale_at(state.global_step, self.warmup_steps))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            bake_lambda_scale(model)


def bake_lambda_scale(model: nn.Module) -> None:
    """Fold ``s`` into the config's λ (and set s = 1): the saved model then equals the trained one."""
    fusion = _fusion(model)
    if fusion.lambda_scale != 1.0:
        model.config.fusion_lambda = fusion.fusion_lambda * fusion.lambda_scale
        fusion.lambda_scale = 1.0


@torch.no_grad()
def init_projection(model: nn.Module, std: float) -> None:
    """``W ~ N(0, std²)`` for a ``zero_linear`` projection behind a closed gate (α = 0, so c = tanh(α) = 0
    and step 0 is still the base generator exactly). With ``W = 0`` the reasoner and ``W`` receive zero
    gradient at step 0 (and O(‖W‖) after); with a random W behind the gate, α receives gradient at once
    and both open together. Uses torch's global RNG (the run's seed)."""
    fusion = _fusion(model)
    if fusion.projection_mode != "zero_linear" or fusion.gate_logit is None:
        raise ValueError(
            "init_projection needs projection='zero_linear' and a fusion_gate (scalar or channel)"
        )
    if torch.any(fusion.gate_logit != 0):
        raise ValueError("init_projection: the gate is open (α ≠ 0); step 0 would no longer be the generator")
    fusion.projection.weight.normal_(0.0, std)
