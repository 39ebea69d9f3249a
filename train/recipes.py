"""Named training recipes: the paper's, the SFT baseline and the warm-start variants.

A recipe is the set of choices the quality experiment compares (``bench/bench_quality.py``) and that
``flythinker train --recipe NAME`` applies: FlyThinkerConfig overrides (gate, centring, projection),
a λ warm-up, how many batches estimate the reasoner centre, and the learning-rate multiplier of the
warm-start parameters (see :mod:`flythinker.train.warm_start`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["Recipe", "RECIPES", "DEFAULT_RECIPE", "RECIPE_RULE", "EVIDENCE", "get_recipe", "warmup_steps_for"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    method: str  # "flythinker" or "sft"
    config_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    lambda_warmup_steps: float = 0  # 0 = off; an int = steps; a fraction in (0, 1) = that share of all steps
    center_reasoner_batches: int = 0  # 0 = no centring
    gate_lr_multiplier: float = 1.0  # lr multiplier of the gate α / zero_linear W (no weight decay)
    projection_init_std: float = (
        0.0  # zero_linear W ~ N(0, std²) at start (needs a gate: c = 0 keeps step 0 exact)
    )
    reasoner_mode: str = "full"  # what --reasoner-mode becomes when it is not given: full, freeze or lora
    description: str = ""


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in [
        Recipe("sft", "sft", description="the generator alone on the same prompts and steps (baseline)"),
        Recipe("paper", "flythinker", description="the paper: λ = 0.5, untrained injection from step 0"),
        Recipe(
            "gate_scalar",
            "flythinker",
            {"fusion_gate": "scalar"},
            gate_lr_multiplier=100.0,
            description="x̃ = E[x] + λ·tanh(α)·a·pad(r), scalar α = 0 at init (step 0 = generator)",
        ),
        Recipe(
            "gate_channel",
            "flythinker",
            {"fusion_gate": "channel"},
            gate_lr_multiplier=100.0,
            description="per-channel α = 0 at init",
        ),
        Recipe(
            "lambda_warmup",
            "flythinker",
            lambda_warmup_steps=0.5,
            description="λ ramps 0 → 0.5 over the first half of the optimizer steps",
        ),
        Recipe(
            "center",
            "flythinker",
            {"center_reasoner": True},
            center_reasoner_batches=4,
            description="r = (h − μ)·m̄/‖h − μ‖, μ estimated on 4 training batches",
        ),
        Recipe(
            "zero_linear",
            "flythinker",
            {"projection": "zero_linear"},
            gate_lr_multiplier=10.0,
            reasoner_mode="freeze",
            description="x̃ = E[x] + λ·a·W·r with W = 0 at init (ControlNet-style), the reasoner frozen as the "
            "quality experiment measured it (with W = 0 it gets no gradient at step 0 anyway)",
        ),
        Recipe(
            "gated",
            "flythinker",
            {"projection": "zero_linear", "fusion_gate": "scalar"},
            gate_lr_multiplier=10.0,
            projection_init_std=0.02,
            description="x̃ = E[x] + λ·tanh(α)·a·W·r, W ~ N(0, 0.02²), α = 0 (step 0 = generator; the reasoner "
            "and W get gradient once α moves, where W = 0 gives them none)",
        ),
        Recipe(
            "gate_center",
            "flythinker",
            {"fusion_gate": "scalar", "center_reasoner": True},
            center_reasoner_batches=4,
            gate_lr_multiplier=100.0,
            description="scalar gate and centring together",
        ),
    ]
}

RECIPE_RULE = (
    "bench/quality/arms.py SELECTION_RULE (committed before the runs it judges): the FlyThinker arm that beats "
    "its donor and const controls on user_val (95 % intervals below zero) and is not worse than tuned SFT on "
    "temporal_val; if none does, the lowest-NLL arm whose step 0 is exactly the generator and whose user_val "
    "difference to tuned SFT has an interval not above zero"
)
DEFAULT_RECIPE = "zero_linear"
"""Chosen by :data:`RECIPE_RULE` from ``bench/results/quality_cpu.md`` through its fallback: no arm beat both its
controls, and ``zero_linear`` (reasoner frozen, as measured) is the lowest-mean-NLL exact-start arm whose user_val
difference to tuned SFT (+0.0026, 95 % interval −0.0062 to +0.0115, 5 seeds × 36 records) does not lie above zero.
The rule's confirmation step (a one-seed pick is rerun on seeds 1 and 2) replaced a first, one-seed pick of
``full30_lora_gated_open``; every candidate is within 0.003 nats/token of SFT."""
EVIDENCE = (
    "with SmolLM2-135M, 48 steps and a frozen or LoRA-trained reasoner, no variant beat tuned SFT on user_val;"
    " the default recipe (+0.003 nats/token, 95 % interval -0.006 to +0.012, 5 seeds x 36 records) was not"
    " separated from a reasoner reading unrelated text (-0.005, -0.010 to +0.001), and a reasoner reading the"
    " profile recovered none of its value: the reasoner was not shown to help (bench/results/quality_cpu.md)"
)
"""What the quality experiment showed, in one line (printed by ``make demo``, quoted by README)."""


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` ("default" = :data:`DEFAULT_RECIPE`), or a ValueError listing them."""
    key = DEFAULT_RECIPE if name == "default" else name
    if key not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {['default', *RECIPES]}")
    return RECIPES[key]


def warmup_steps_for(recipe: Recipe, total_steps: int) -> int:
    """The λ warm-up length in optimizer steps for a run of ``total_steps``."""
    value = recipe.lambda_warmup_steps
    if 0 < value < 1:
        return max(1, round(value * total_steps))
    return int(value)
