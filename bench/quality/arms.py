"""The arms of the quality experiment, its controls, and the selection rule (written before the runs).

An arm is a ``flythinker train`` run (a :class:`~flythinker.train.finetune.FinetuneConfig`: method,
recipe, learning rate, reasoner mode, …) plus, for the controls, a *substitution* of what the reasoner
hands the fusion. Controls are options of this benchmark, not of the model API:

* ``donor`` — the reasoner reads a same-length window of *other* training text (``controls.Donor``);
* ``const`` — the reasoner state is replaced by its mean over training tokens: ``W·r`` becomes a
  learned input bias (``controls.ConstantState``);
* ``own_embedding`` — the reasoner state is the generator's own embedding of the same token, so
  position i receives ``W·E[x_{i−1}]``·m̄/‖E[x_{i−1}]‖: SFT plus an equal-size zero-initialised map
  of the previous token's embedding, no reasoner (``controls.OwnEmbedding``).

Each control runs at the capacity and learning rate of the arm it controls (``controls_arm``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = [
    "Arm",
    "ARMS",
    "CONFIRMATION_RULE",
    "SELECTION_RULE",
    "TUNED_ARMS",
    "TUNING_GRID",
    "TUNING_SEED",
    "arm_names",
]


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    method: str  # "sft" or "flythinker"
    recipe: str = "default"  # a train.recipes name (flythinker arms)
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # more FinetuneConfig fields
    control: str | None = None  # None, "donor", "const" or "own_embedding"
    controls_arm: str | None = None  # the arm whose capacity and learning rate a control shares
    lr_from: str | None = None  # the arm whose tuned learning rate this arm uses (None: its own)
    reasoner_layers: int | None = None  # None: the experiment's --reasoner-layers; 0: all layers
    generate: bool = False  # also greedy generations on the generation requests
    description: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The `gated` recipe opens the injection from an exactly-closed start with a small random W behind a
# zero scalar gate, so the reasoner (and W) receive gradient once α moves (with W = 0 they receive
# none at step 0 and O(‖W‖) after).
LORA = {"reasoner_mode": "lora"}
CONTEXT = {
    "reasoner_context": True,
    "profile_tokens": 0,
}  # the profile reaches the model only through the reasoner

ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in [
        Arm("sft", "sft", generate=True, description="the generator alone (lr tuned on user_val)"),
        Arm(
            "zero_linear",
            "flythinker",
            "zero_linear",
            lr_from="sft",
            generate=True,
            description="frozen reasoner, x̃ = E[x] + λ·a·W·r, W = 0 at init, W at 10× lr (the old default)",
        ),
        Arm(
            "zero_linear_1x",
            "flythinker",
            "zero_linear",
            {"warm_start_lr_multiplier": 1.0},
            lr_from="zero_linear",
            description="as zero_linear with W at 1× lr",
        ),
        Arm(
            "donor",
            "flythinker",
            "zero_linear",
            control="donor",
            controls_arm="zero_linear",
            generate=True,
            description="zero_linear whose reasoner reads a same-length window of other training text",
        ),
        Arm(
            "const",
            "flythinker",
            "zero_linear",
            control="const",
            controls_arm="zero_linear",
            description="zero_linear with the reasoner state replaced by its training mean (a learned bias)",
        ),
        Arm(
            "sft_adapter",
            "flythinker",
            "zero_linear",
            control="own_embedding",
            controls_arm="zero_linear",
            description="SFT + zero-initialised W on the previous token's own embedding (no reasoner)",
        ),
        Arm(
            "lora_gated",
            "flythinker",
            "gated",
            LORA,
            lr_from="zero_linear",
            description="LoRA-trained reasoner; W ~ N(0, 0.02²) behind a zero scalar gate (step 0 = generator)",
        ),
        Arm(
            "lora_gated_donor",
            "flythinker",
            "gated",
            LORA,
            control="donor",
            controls_arm="lora_gated",
            lr_from="zero_linear",
            description="lora_gated whose reasoner reads other training text",
        ),
        Arm(
            "sft_noprofile",
            "sft",
            overrides={"profile_tokens": 0},
            lr_from="sft",
            generate=True,
            description="the generator alone without the profile (request + response only)",
        ),
        Arm(
            "ctx",
            "flythinker",
            "zero_linear",
            CONTEXT,
            lr_from="sft",
            generate=True,
            description="reasoner context: the frozen reasoner reads profile + request + response, the generator "
            "request + response (no profile); W = 0 at init, 10× lr",
        ),
        Arm(
            "ctx_donor",
            "flythinker",
            "zero_linear",
            CONTEXT,
            control="donor",
            controls_arm="ctx",
            generate=True,
            description="ctx whose reasoner reads a same-length window of other training text",
        ),
        Arm(
            "ctx_const",
            "flythinker",
            "zero_linear",
            CONTEXT,
            control="const",
            controls_arm="ctx",
            description="ctx with the reasoner state replaced by its training mean",
        ),
        # Added after lora_gated seed 0 (the arms above were fixed before any run): with α's rate at 10×
        # the gate stayed almost shut for 48 steps (that run equals SFT within 1e-4 nats per record), so
        # the trained reasoner never had a say. These open it at 100× (α and W), the rate of the
        # gate_scalar recipes; they are judged by the same committed rule.
        Arm(
            "lora_gated_open",
            "flythinker",
            "gated",
            {**LORA, "warm_start_lr_multiplier": 100.0},
            lr_from="zero_linear",
            description="lora_gated with α and W at 100× lr, so the gate opens within 48 steps",
        ),
        Arm(
            "lora_gated_open_donor",
            "flythinker",
            "gated",
            {**LORA, "warm_start_lr_multiplier": 100.0},
            control="donor",
            controls_arm="lora_gated_open",
            lr_from="zero_linear",
            description="lora_gated_open whose reasoner reads other training text",
        ),
        Arm(
            "full30_lora_gated_open",
            "flythinker",
            "gated",
            {**LORA, "warm_start_lr_multiplier": 100.0},
            lr_from="zero_linear",
            reasoner_layers=0,
            description="lora_gated_open with the full 30-layer SmolLM2 reasoner",
        ),
        Arm(
            "full30_lora_gated",
            "flythinker",
            "gated",
            LORA,
            lr_from="zero_linear",
            reasoner_layers=0,
            description="lora_gated with the full 30-layer SmolLM2 reasoner",
        ),
    ]
}

TUNING_GRID = (2e-5, 6e-5, 2e-4)
"""Learning rates tried for each tuned arm (:data:`TUNED_ARMS`), on ``TUNING_SEED`` only."""
TUNED_ARMS = ("sft",)
TUNING_SEED = 100
"""The tuning runs use a seed that no reported run uses (reported seeds are 0, 1, …)."""

SELECTION_RULE = """\
Written before the runs it judges (bench/quality/arms.py).

1. Learning rate. `sft` is run at every rate of TUNING_GRID on TUNING_SEED (not a reported seed) and
   keeps the rate with the lowest final teacher-forced NLL on all user_val records. Every FlyThinker
   arm trains the same generator with the same optimizer at that rate (the CPU budget does not allow
   tuning each arm); the added map's own rate is varied instead (zero_linear: W at 10×,
   zero_linear_1x: W at 1×). Controls use the rate of the arm they control. SFT is therefore the
   only arm tuned on user_val, which favours SFT, not FlyThinker.
2. Primary metric: final teacher-forced NLL (nats per target token) on all user_val records; paired
   differences per (seed, record), 95 % interval by bootstrap over records and seeds (2,000 resamples).
3. "The reasoner helps" is said only of a FlyThinker arm whose user_val NLL is below both its
   `donor` and its `const` control with 95 % intervals excluding zero, and which is not worse than
   tuned SFT on temporal_val (its interval's lower end ≤ 0 is not enough: its mean difference must be
   ≤ 0). temporal_val is computed for every run but read only after the default is chosen.
4. Default recipe of `flythinker train`: among the FlyThinker arms the CLI can run (no control), the
   one with the lowest mean final user_val NLL that satisfies 3. If none does, the FlyThinker arm with
   the lowest mean user_val NLL among those whose step 0 equals the base generator exactly and whose
   user_val difference to tuned SFT has a 95 % interval that does not lie above zero; README then
   says plainly that the reasoner's information was not shown to help.
"""

CONFIRMATION_RULE = """\
Added after the rule was applied to the runs above and before the runs it asks for (2026-12-07).

5. Confirmation. The rule's point 4 picked `full30_lora_gated_open`, an arm with one seed (its mean is
   then one seed's NLL, set beside arms averaged over 3-5 seeds). An arm that the rule picks with fewer
   than 3 seeds is run on seeds 1 and 2 before it ships as the default, and points 3 and 4 are applied
   again, unchanged, to all runs; whatever they then pick ships, and the report states both outcomes.
   Nothing else changes: no arm is dropped or added, no other seed is run.
"""


def arm_names() -> list[str]:
    return list(ARMS)
