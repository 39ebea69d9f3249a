"""FlyThinkerConfig: a generator config, a reasoner config and the fusion settings (docs/design.md §1, §3)."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

from transformers import AutoConfig, PretrainedConfig

PROJECTIONS = ("zero_pad", "linear", "zero_linear")
FUSION_GATES = ("none", "scalar", "channel")
MAX_FUSION_LAMBDA = 100.0


def _check_real(name: str, value: Any, low: float, high: float) -> float:
    """``value`` as a float in [low, high], or a ValueError naming the option, the value and the range."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"FlyThinkerConfig.{name} must be a finite number in [{low}, {high}], got {value!r}")
    if not low <= float(value) <= high:
        raise ValueError(f"FlyThinkerConfig.{name} must be in [{low}, {high}], got {value!r}")
    return float(value)


def _as_config(value: PretrainedConfig | dict[str, Any] | None, field: str) -> PretrainedConfig | None:
    """Turn a serialised sub-config (a dict with ``model_type``) back into its config class."""
    if value is None or isinstance(value, PretrainedConfig):
        return value
    if isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", None)
        if model_type is None:
            raise ValueError(
                f"FlyThinkerConfig.{field} needs a 'model_type' (e.g. 'qwen2', 'llama'), got keys {sorted(value)}"
            )
        return AutoConfig.for_model(model_type, **value)
    raise TypeError(
        f"FlyThinkerConfig.{field} must be a PretrainedConfig or a dict, got {type(value).__name__}"
    )


class FlyThinkerConfig(PretrainedConfig):
    r"""Configuration of a think-while-generating model.

    The fusion (``flythinker.modeling.fusion.LatentFusion``), for positions i ≥ 1::

        h   = R(x).last_hidden_state                  (projected first when projection="linear")
        u   = h − μ                                   (μ = reasoner_center when center_reasoner, else 0)
        r   = u · m̄ / ‖u‖₂                            m̄ = mean_v ‖E_G[v]‖₂, ‖u‖ constant in backward
        x̃_i = E_G[x_i] + λ·s · a_{i-1} · P(c ⊙ r_{i-1})

    with ``c = tanh(α)`` the learned gate (``fusion_gate``; c = 1 when "none"), ``P`` = zero-padding to
    d_G (or the zero-initialised ``W`` of ``projection="zero_linear"``) and ``s`` the training-time λ
    warm-up factor (1 outside training). With every option off (the defaults) this is the paper's
    equation ``x̃_i = E_G[x_i] + λ·a_{i-1}·pad(h_{i-1}·m̄/‖h_{i-1}‖)``.

    Args:
        generator_config: config of the generator, any causal-LM architecture (Qwen2, Llama, Gemma, ...).
        reasoner_config: config of the reasoner backbone; its ``last_hidden_state`` is the latent ``h``.
        fusion_lambda: λ (paper default 0.5), a finite number in [0, 100].
        norm_eps: lower bound on ‖u‖ (0 reproduces the equations exactly; a zero state is never NaN).
        projection: ``"zero_pad"`` (faithful: r fills the first d_R channels), ``"linear"`` (a learned
            ``Linear(d_R, d_G)`` applied to h before normalisation; required when d_R > d_G without
            "zero_linear") or ``"zero_linear"`` (ControlNet-style: ``W·r`` with ``W`` zero-initialised, so
            step 0 is exactly the generator).
        fusion_gate: ``"none"``, ``"scalar"`` or ``"channel"``: a learned gate ``c = tanh(α)`` with α = 0
            at initialisation (Flamingo-style), so step 0 is exactly the generator.
        center_reasoner: subtract a per-channel mean μ of the reasoner's states (a saved buffer, estimated
            on training data with ``flythinker.train.warm_start.estimate_reasoner_center``) before the
            rescale; removes the constant outlier channel of pretrained final states.
        use_fused_loss: compute the training loss with ``flythinker.kernels.linear_cross_entropy.fused_linear_cross_entropy``
            (never materialises [tokens, vocab] logits); logits are then not returned unless asked.
        reward_heads: optional JSON spec of reward heads (see ``flythinker.modeling.heads``).
        reasoner_context: ``False`` (the paper: the reasoner reads ``input_ids``, the generator's tokens) or
            ``True``: the reasoner reads its own, longer sequence ``reasoner_input_ids`` (e.g. profile +
            request + response so far) whose right end is the generator's; generator column j receives the
            reasoner state of column j + (L_R − L_G) − 1 (``flythinker.modeling.reasoner_context``,
            docs/design.md §1 "Reasoner context").

    The injection is zeroed at every position whose predecessor is padding (``a_{i-1} = 0``) and at
    every sequence start (``position_ids == 0``), which covers left padding and packed sequences.
    ``get_text_config()`` and ``text_config`` are the generator's config, and ``vocab_size``,
    ``hidden_size`` and ``max_position_embeddings`` read through to it: serving engines, lm-eval and
    transformers utilities find vocabulary, width and context length there.
    """

    model_type = "flythinker"
    sub_configs = {"generator_config": AutoConfig, "reasoner_config": AutoConfig}
    has_no_defaults_at_init = True

    def __init__(
        self,
        generator_config: PretrainedConfig | dict[str, Any] | None = None,
        reasoner_config: PretrainedConfig | dict[str, Any] | None = None,
        fusion_lambda: float = 0.5,
        norm_eps: float = 0.0,
        projection: str = "zero_pad",
        fusion_gate: str = "none",
        center_reasoner: bool = False,
        use_fused_loss: bool = True,
        reward_heads: dict[str, dict[str, Any]] | None = None,
        reasoner_context: bool = False,
        **kwargs: Any,
    ):
        self.generator_config = _as_config(generator_config, "generator_config")
        self.reasoner_config = _as_config(reasoner_config, "reasoner_config")
        self.fusion_lambda = _check_real("fusion_lambda", fusion_lambda, 0.0, MAX_FUSION_LAMBDA)
        self.norm_eps = _check_real("norm_eps", norm_eps, 0.0, 1.0)
        self.projection = projection
        self.fusion_gate = fusion_gate
        if not isinstance(center_reasoner, bool):
            raise ValueError(
                f"FlyThinkerConfig.center_reasoner must be True or False, got {center_reasoner!r}"
            )
        self.center_reasoner = center_reasoner
        self.use_fused_loss = bool(use_fused_loss)
        self.reward_heads = dict(reward_heads) if reward_heads else None
        if not isinstance(reasoner_context, bool):
            raise ValueError(
                f"FlyThinkerConfig.reasoner_context must be True or False, got {reasoner_context!r}"
            )
        self.reasoner_context = reasoner_context
        kwargs.setdefault("tie_word_embeddings", False)  # the generator ties its own weights
        from .remote_code import default_auto_map  # always set: TRL reads config.auto_map (remote_code.py)

        kwargs["auto_map"] = {**default_auto_map(), **(kwargs.get("auto_map") or {})}
        super().__init__(**kwargs)
        self.validate_fusion()

    def validate_fusion(self) -> None:
        """Raise a clear error for impossible combinations (checked at construction, not mid-forward)."""
        _check_real("fusion_lambda", self.fusion_lambda, 0.0, MAX_FUSION_LAMBDA)
        _check_real("norm_eps", self.norm_eps, 0.0, 1.0)
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {self.projection!r}")
        if self.fusion_gate not in FUSION_GATES:
            raise ValueError(f"fusion_gate must be one of {FUSION_GATES}, got {self.fusion_gate!r}")
        if self.generator_config is None or self.reasoner_config is None:
            return
        d_g, d_r = self.generator_hidden_size, self.reasoner_hidden_size
        if d_r > d_g and self.projection == "zero_pad":
            raise ValueError(
                f"reasoner width d_R={d_r} exceeds generator width d_G={d_g}: zero-padding cannot fit it; "
                "use projection='linear' or 'zero_linear' (a learned Linear(d_R, d_G); "
                "`flythinker train --projection linear`)"
            )

    @property
    def injected_width(self) -> int:
        """Width of the rescaled source r: d_G after a pre-norm ``linear`` projection, else d_R."""
        return self.generator_hidden_size if self.projection == "linear" else self.reasoner_hidden_size

    # Top-level views of the generator's geometry (read by lm-eval, vLLM, transformers utilities).
    @property
    def text_config(self) -> PretrainedConfig | None:
        return self.get_text_config()

    @property
    def vocab_size(self) -> int | None:
        return (
            getattr(self.get_text_config(), "vocab_size", None) if self.generator_config is not None else None
        )

    @vocab_size.setter
    def vocab_size(self, value: int) -> None:
        if self.generator_config is not None:
            self.get_text_config().vocab_size = value

    @property
    def hidden_size(self) -> int | None:
        return self.generator_hidden_size if self.generator_config is not None else None

    @property
    def max_position_embeddings(self) -> int | None:
        if self.generator_config is None:
            return None
        return getattr(self.get_text_config(), "max_position_embeddings", None)

    @property
    def generator_hidden_size(self) -> int:
        return self.generator_config.get_text_config().hidden_size

    @property
    def reasoner_hidden_size(self) -> int:
        return self.reasoner_config.get_text_config().hidden_size

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> PretrainedConfig:
        """The generator's config: vocabulary, width and context length of what this model emits."""
        if self.generator_config is None:
            return self
        return self.generator_config.get_text_config(decoder=decoder, encoder=encoder)
