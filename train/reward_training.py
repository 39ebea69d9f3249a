"""Training reward heads: regression on judge scores, Bradley–Terry on pairs, judge distillation.

Losses (per batch, on the outputs of ``model.score_rewards(...)[head]``):

* regression  L = Σ_d mean_b ((ŷ_bd − y_bd) / range_d)²   over dimensions d with targets; each
  dimension is normalised by its range (4 for the 1–5 scores, 100 for bystander) so no dimension
  dominates; NaN targets are ignored.
* Bradley–Terry  L = −mean_b log σ(r_chosen − r_rejected)   on the combined reward ``"reward"``.
* distillation = regression with the local judge's expected-value scores as targets.

``model`` is anything with ``score_rewards(input_ids, attention_mask, analysis_mask=None)`` returning
``{head: {dimension: Tensor[B]}}`` — :class:`flythinker.modeling.heads.EmpathyRewardModel` or
``FlyThinkerForCausalLM`` with ``config.reward_heads``.

Batches are dicts of tensors (:class:`RewardCollator` builds them from samples):
regression ``{input_ids, attention_mask, analysis_mask?, targets: {dim: Tensor[B]}}``;
pairs ``{chosen_input_ids, chosen_attention_mask, chosen_analysis_mask?, rejected_...}``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from flythinker.rewards.encoding import encode_samples
from flythinker.rewards.formula import ALL_DIMENSIONS
from flythinker.rewards.samples import EmpathySample

DIMENSION_RANGES: dict[str, float] = {
    "resonation": 4.0,
    "expression": 4.0,
    "reception": 4.0,
    "bystander": 100.0,
}
OBJECTIVES = ("regression", "bradley_terry")


def regression_loss(
    pred: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    dimensions: Sequence[str] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-dimension range-normalised MSE, summed; also returns each dimension's loss."""
    dims = [d for d in (dimensions or ALL_DIMENSIONS) if d in target]
    if not dims:
        raise ValueError(
            f"no regression targets among {list(dimensions or ALL_DIMENSIONS)}; got {sorted(target)}"
        )
    total, parts = 0.0, {}
    for d in dims:
        y = target[d].to(pred[d].device, torch.float32)
        keep = ~torch.isnan(y)
        if not keep.any():
            continue
        loss = (((pred[d].float() - y) / DIMENSION_RANGES[d])[keep] ** 2).mean()
        parts[d] = float(loss.detach())
        total = total + loss
    if not parts:
        raise ValueError("every regression target in the batch is NaN")
    return total, parts


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """−mean log σ(r_chosen − r_rejected)."""
    return -F.logsigmoid(r_chosen.float() - r_rejected.float()).mean()


class RewardCollator:
    """Builds tensor batches from samples for :func:`fit_reward_heads`.

    Regression examples: ``{"sample": EmpathySample, "targets": {dim: float}}``.
    Pair examples: ``{"chosen": EmpathySample, "rejected": EmpathySample}``.
    """

    def __init__(self, tokenizer, max_length: int = 1024) -> None:
        self.tokenizer, self.max_length = tokenizer, int(max_length)

    def __call__(self, examples: Sequence[Mapping]) -> dict:
        if "chosen" in examples[0]:
            out = {}
            for side in ("chosen", "rejected"):
                enc = encode_samples(self.tokenizer, [e[side] for e in examples], max_length=self.max_length)
                out.update({f"{side}_{k}": v for k, v in enc.items()})
            return out
        enc = encode_samples(self.tokenizer, [e["sample"] for e in examples], max_length=self.max_length)
        dims = sorted({d for e in examples for d in e["targets"]})
        enc["targets"] = {
            d: torch.tensor([float(e["targets"].get(d, math.nan)) for e in examples]) for d in dims
        }
        return enc


def _score(model, batch: Mapping, head: str, prefix: str = "") -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    kwargs = {
        "input_ids": batch[prefix + "input_ids"].to(device),
        "attention_mask": batch[prefix + "attention_mask"].to(device),
    }
    if batch.get(prefix + "analysis_mask") is not None:
        kwargs["analysis_mask"] = batch[prefix + "analysis_mask"].to(device)
    out = model.score_rewards(**kwargs)
    if head not in out:
        raise KeyError(f"reward head {head!r} not among the model's heads {sorted(out)}")
    return out[head]


def batch_loss(model, batch: Mapping, objective: str, head: str = "perm") -> torch.Tensor:
    if objective == "regression":
        return regression_loss(_score(model, batch, head), batch["targets"])[0]
    if objective == "bradley_terry":
        return bradley_terry_loss(
            _score(model, batch, head, "chosen_")["reward"], _score(model, batch, head, "rejected_")["reward"]
        )
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def fit_reward_heads(
    model,
    batches: Iterable[Mapping],
    *,
    objective: str = "regression",
    head: str = "perm",
    epochs: int = 1,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    train_backbone: bool = True,
    max_grad_norm: float | None = 1.0,
    progress: bool = True,
) -> list[float]:
    """A plain AdamW loop; returns the loss of every step.  ``train_backbone=False`` trains only
    parameters under ``reward_heads`` (the rest is frozen for the call and restored after)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    batches = list(batches)
    named = list(model.named_parameters())
    old_flags = {n: p.requires_grad for n, p in named}
    if not train_backbone:
        for n, p in named:
            p.requires_grad_(n.startswith("reward_heads.") or ".reward_heads." in n)
    params = [p for _, p in named if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters (does the model have reward_heads?)")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    steps = range(epochs * len(batches))
    if progress:
        steps = tqdm(steps, desc=f"reward heads ({objective})", unit="step")
    was_training = model.training
    model.train()
    try:
        for step in steps:
            loss = batch_loss(model, batches[step % len(batches)], objective, head)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        model.train(was_training)
        for n, p in named:
            p.requires_grad_(old_flags[n])
    return losses


@torch.no_grad()
def pairwise_accuracy(model, pair_batches: Iterable[Mapping], head: str = "perm") -> float:
    """Fraction of pairs with r_chosen > r_rejected (eval mode)."""
    was_training = model.training
    model.eval()
    right = total = 0
    try:
        for batch in pair_batches:
            rc = _score(model, batch, head, "chosen_")["reward"]
            rr = _score(model, batch, head, "rejected_")["reward"]
            right += int((rc > rr).sum())
            total += rc.numel()
    finally:
        model.train(was_training)
    return right / max(total, 1)


def distill_from_judge(
    model,
    tokenizer,
    judge,
    samples: Sequence[EmpathySample],
    *,
    head: str = "perm",
    dimensions: Sequence[str] = ALL_DIMENSIONS,
    batch_size: int = 8,
    max_length: int = 1024,
    **fit_kwargs,
) -> tuple[list[float], dict[str, list[float]]]:
    """Score ``samples`` with the local judge and regress the head on those scores.

    Returns (per-step losses, the judge's targets)."""
    targets = judge.score(samples, dimensions)
    collate = RewardCollator(tokenizer, max_length)
    examples = [
        {"sample": s, "targets": {d: targets[d][i] for d in dimensions}} for i, s in enumerate(samples)
    ]
    batches = [collate(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)]
    return fit_reward_heads(model, batches, objective="regression", head=head, **fit_kwargs), targets
