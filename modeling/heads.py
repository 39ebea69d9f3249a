"""Empathy reward heads (PERM, PereGRM) and a standalone reward model over any transformers backbone.

A head reads a backbone's *final* hidden states (post final norm) and outputs PERM's four scores
and the combined reward (``flythinker.modeling.reward_formula``):

    h_last = hidden[b, last non-pad position]                (left or right padding)
    h_ana  = mean of hidden over the ``# Analysis`` tokens    (``analysis_mask``; learned vector if empty)
    z      = W · dropout(h) + b                               W: [4, d], fp32 math
    resonation = 1 + 4·σ(z_ana[0])    (from h_ana; from h_last when no analysis_mask is given)
    expression = 1 + 4·σ(z_last[1]),  reception = 1 + 4·σ(z_last[2])      ∈ (1, 5)
    bystander  = 100·σ(z_last[3])                                          ∈ (0, 100)
    reward     = M(res/5, exp/5, rec/5) + c_bys·(bystander/100 − 1) [− c_len·max(0, n − L)]

The length term is added only when the caller passes ``num_tokens`` (completion lengths).  Hidden
states are cast to fp32 inside the head whatever the model dtype, and so are the head's weights at
use.  A PereGRM head has the same structure; the personalisation (user memories, per-query
criteria) is in the text it reads (``flythinker.rewards.samples.context_text``).

Heads are configured by a JSON-serialisable spec stored in the model config as
``config.reward_heads`` — ``{"perm": {"kind": "perm"}, "peregrm": {"kind": "peregrm", "dropout": 0.1}}``
— built by :func:`build_reward_heads` and initialised by :func:`init_reward_head_weights` (call it
from a model's ``_init_weights`` on every :class:`RewardHead` so no head parameter is left out).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from .reward_formula import (
    COMBINE_MODES,
    DEFAULT_BYSTANDER_COEF,
    DEFAULT_LENGTH_COEF,
    DEFAULT_LENGTH_LIMIT,
    perm_reward_tensor,
)

HEAD_KINDS = ("perm", "peregrm")
HEAD_OUTPUTS = ("resonation", "expression", "reception", "bystander", "reward")
_SPEC_KEYS = {"kind", "dropout", "combine", "weights", "bystander_coef", "length_coef", "length_limit"}


def pool_last_token(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """``[B, T, d] → [B, d]``: the state at each row's last position with mask 1 (any padding side).

    A row with an all-zero mask gives position 0.  ``attention_mask=None`` takes the last position.
    """
    if attention_mask is None:
        return hidden_states[:, -1]
    if attention_mask.shape != hidden_states.shape[:2]:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} does not match hidden "
            f"states {tuple(hidden_states.shape[:2])}"
        )
    pos = torch.arange(hidden_states.shape[1], device=hidden_states.device)
    idx = torch.where(attention_mask.bool(), pos, -1).amax(-1).clamp_min(0)
    return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), idx]


def pool_span(hidden_states: torch.Tensor, span_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T, d] → [B, d]``: mean over the positions where ``span_mask`` is true (zeros if none)."""
    if span_mask.shape != hidden_states.shape[:2]:
        raise ValueError(
            f"span_mask {tuple(span_mask.shape)} does not match hidden states "
            f"{tuple(hidden_states.shape[:2])}"
        )
    m = span_mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * m).sum(1) / m.sum(1).clamp_min(1.0)


class RewardHead(nn.Module):
    """One PERM / PereGRM reward head (see the module docstring for the equations)."""

    def __init__(
        self,
        hidden_size: int,
        kind: str = "perm",
        dropout: float = 0.0,
        combine: str = "harmonic",
        weights: list[float] | Mapping[str, float] | None = None,
        bystander_coef: float = DEFAULT_BYSTANDER_COEF,
        length_coef: float = DEFAULT_LENGTH_COEF,
        length_limit: int = DEFAULT_LENGTH_LIMIT,
    ) -> None:
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"reward head kind must be one of {HEAD_KINDS}, got {kind!r}")
        if combine not in COMBINE_MODES:
            raise ValueError(f"reward head combine must be one of {COMBINE_MODES}, got {combine!r}")
        self.kind = kind
        self.combine = combine
        self.weights = weights
        self.bystander_coef = float(bystander_coef)
        self.length_coef = float(length_coef)
        self.length_limit = int(length_limit)
        self.dropout = nn.Dropout(float(dropout))
        self.score = nn.Linear(hidden_size, 4)
        # Stands in for the pooled analysis when a row's `# Analysis` span is empty (missing section).
        self.empty_analysis = nn.Parameter(torch.zeros(hidden_size))

    def _logits(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.linear(self.dropout(pooled), self.score.weight.float(), self.score.bias.float())

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        analysis_mask: torch.Tensor | None = None,
        num_tokens: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Scores ``[B]`` per dimension and ``"reward"``; ``"logits"`` ``[B, 4]`` are the raw z."""
        h = hidden_states.float()
        z = self._logits(pool_last_token(h, attention_mask))
        if analysis_mask is not None:
            span = pool_span(h, analysis_mask)
            empty = ~analysis_mask.bool().any(-1, keepdim=True)
            span = torch.where(empty, self.empty_analysis.float().expand_as(span), span)
            z = torch.cat([self._logits(span)[:, :1], z[:, 1:]], dim=-1)
        scores = 1.0 + 4.0 * torch.sigmoid(z[:, :3])
        bystander = 100.0 * torch.sigmoid(z[:, 3])
        reward = perm_reward_tensor(
            scores[:, 0],
            scores[:, 1],
            scores[:, 2],
            bystander,
            num_tokens,
            mode=self.combine,
            weights=self.weights,
            bystander_coef=self.bystander_coef,
            length_coef=self.length_coef,
            length_limit=self.length_limit,
        )
        return {
            "resonation": scores[:, 0],
            "expression": scores[:, 1],
            "reception": scores[:, 2],
            "bystander": bystander,
            "reward": reward,
            "logits": z,
        }


def build_reward_heads(spec: Mapping[str, Mapping], hidden_size: int) -> nn.ModuleDict:
    """Heads from a JSON-serialisable spec ``{name: {"kind": "perm" | "peregrm", ...}}``.

    Keys per head: ``kind`` (required), ``dropout`` (0.0), ``combine`` ("harmonic"), ``weights``,
    ``bystander_coef`` (0.5), ``length_coef`` (0.001), ``length_limit`` (768).
    """
    heads = nn.ModuleDict()
    for name, head_spec in (spec or {}).items():
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"reward head name must be a non-empty str without '.', got {name!r}")
        if not isinstance(head_spec, Mapping) or "kind" not in head_spec:
            raise ValueError(f"reward_heads[{name!r}] must be a dict with a 'kind' key, got {head_spec!r}")
        unknown = set(head_spec) - _SPEC_KEYS
        if unknown:
            raise ValueError(
                f"reward_heads[{name!r}] has unknown keys {sorted(unknown)}; allowed {sorted(_SPEC_KEYS)}"
            )
        heads[name] = RewardHead(hidden_size, **head_spec)
    return heads


def init_reward_head_weights(module: nn.Module, std: float) -> None:
    """Initialise every parameter of the reward heads inside ``module``: W ~ N(0, std), b = 0,
    ``empty_analysis`` = 0.  Uses transformers' guarded init so loaded weights are never overwritten."""
    try:
        from transformers import initialization as init
    except ImportError:  # pragma: no cover - older transformers
        init = nn.init
    for sub in module.modules():
        if isinstance(sub, RewardHead):
            init.normal_(sub.score.weight, mean=0.0, std=std)
            init.zeros_(sub.score.bias)
            init.zeros_(sub.empty_analysis)


def _hidden_size(config: PretrainedConfig) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.hidden_size)


class EmpathyRewardConfig(PretrainedConfig):
    """Config of :class:`EmpathyRewardModel`: a backbone config (any architecture) + a heads spec."""

    model_type = "flythinker_reward"
    sub_configs = {"backbone_config": AutoConfig}

    def __init__(
        self,
        backbone_config: PretrainedConfig | dict | None = None,
        reward_heads: dict[str, dict] | None = None,
        initializer_range: float | None = None,
        **kwargs,
    ) -> None:
        if isinstance(backbone_config, dict):
            backbone_config = AutoConfig.for_model(**backbone_config)
        self.backbone_config = backbone_config
        self.reward_heads = dict(reward_heads) if reward_heads is not None else {"perm": {"kind": "perm"}}
        if initializer_range is None:
            initializer_range = (
                getattr(backbone_config, "initializer_range", 0.02) if backbone_config else 0.02
            )
        self.initializer_range = float(initializer_range)
        super().__init__(**kwargs)


class EmpathyRewardModel(PreTrainedModel):
    """A reward model: ``AutoModel.from_config(backbone_config)`` + reward heads, saved together.

    ``score_rewards(input_ids, attention_mask, analysis_mask=None, num_tokens=None)`` returns
    ``{head_name: {"resonation", "expression", "reception", "bystander", "reward", "logits"}}``, the
    same contract as ``FlyThinkerForCausalLM.score_rewards``.
    """

    config_class = EmpathyRewardConfig
    base_model_prefix = "reward_model"
    supports_gradient_checkpointing = True

    def __init__(self, config: EmpathyRewardConfig) -> None:
        super().__init__(config)
        if config.backbone_config is None:
            raise ValueError("EmpathyRewardConfig.backbone_config is required")
        self.backbone = AutoModel.from_config(config.backbone_config)
        self.reward_heads = build_reward_heads(config.reward_heads, _hidden_size(config.backbone_config))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, RewardHead):
            init_reward_head_weights(module, self.config.initializer_range)
        elif isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)):
            super()._init_weights(module)

    @classmethod
    def from_backbone(
        cls, backbone: PreTrainedModel, head_spec: dict[str, dict] | None = None
    ) -> EmpathyRewardModel:
        """Wrap an existing (pretrained) model; a causal LM contributes its base model (no LM head)."""
        base = backbone.base_model if hasattr(backbone, "base_model") else backbone
        model = cls(EmpathyRewardConfig(backbone_config=base.config, reward_heads=head_spec))
        model.backbone.load_state_dict(base.state_dict(), strict=True)
        return model.to(next(base.parameters()).device)

    def score_rewards(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        analysis_mask: torch.Tensor | None = None,
        num_tokens: torch.Tensor | None = None,
    ) -> dict[str, dict[str, torch.Tensor]]:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        return {
            name: head(hidden, attention_mask, analysis_mask, num_tokens)
            for name, head in self.reward_heads.items()
        }

    forward = score_rewards


try:  # let AutoConfig / AutoModel load saved reward models
    AutoConfig.register(EmpathyRewardConfig.model_type, EmpathyRewardConfig, exist_ok=True)
    AutoModel.register(EmpathyRewardConfig, EmpathyRewardModel, exist_ok=True)
except (TypeError, ValueError):  # pragma: no cover - registry API differences
    pass
