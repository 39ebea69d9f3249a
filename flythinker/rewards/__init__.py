"""Empathy rewards: the PERM formula, section parsing, judge prompts, a local LM judge and TRL reward
functions (PERM, arXiv 2601.10532; PereGRM / PersonaEmp, arXiv 2606.00728).

Only the light, dependency-free pieces are imported here; import ``flythinker.rewards.judge`` and
``flythinker.rewards.trl_rewards`` explicitly.
"""

from flythinker.rewards.formula import (
    ALL_DIMENSIONS,
    COMBINE_MODES,
    EMPATHY_DIMENSIONS,
    bystander_term,
    combine,
    combine_tensor,
    empathy_term,
    length_excess,
    perm_reward,
    perm_reward_tensor,
)
from flythinker.rewards.samples import EmpathySample
from flythinker.rewards.sections import Sections, parse_sections

__all__ = [
    "ALL_DIMENSIONS",
    "COMBINE_MODES",
    "EMPATHY_DIMENSIONS",
    "EmpathySample",
    "Sections",
    "bystander_term",
    "combine",
    "combine_tensor",
    "empathy_term",
    "length_excess",
    "parse_sections",
    "perm_reward",
    "perm_reward_tensor",
]
