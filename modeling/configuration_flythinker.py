"""FlyThinkerConfig: a generator config, a reasoner config and the fusion settings (DESIGN §1, §3)."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

PROJECTIONS = ("zero_pad", "linear")


def _as_config(value: PretrainedConfig | dict[str, Any] | None, field: str) -> PretrainedConfig | None:
    """Turn a serialised sub-config (a dict with ``model_type``) back into its config class."""
    if value is None or isinstance(value, PretrainedConfig):
        return value
    if isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", None)
        if model_type is None:
            raise ValueError(f"FlyThinkerConfig.{field} needs a 'model_type' (e.g. 'qwen2', 'llama'), got keys {sorted(value)}")
        return AutoConfig.for_model(model_type, **value)
    raise TypeError(f"FlyThinkerConfig.{field} must be a PretrainedConfig or a dict, got {type(value).__name__}")


class FlyThinkerConfig(PretrainedConfig):
    r"""Configuration of a think-while-generating model.

    Args:
        generator_config: config of the generator, any causal-LM architecture (Qwen2, Llama, Gemma, ...).
        reasoner_config: config of the reasoner backbone; its ``last_hidden_state`` is the latent ``h``.
        fusion_lambda: λ in ``x̃_i = E_G[x_i] + λ·a_{i-1}·pad(h_{i-1}·m̄/‖h_{i-1}‖)`` (paper default 0.5).
        norm_eps: lower bound on ‖h‖ (0 reproduces the equations exactly; ≥ 1e-6 guards zero vectors).
        projection: ``"zero_pad"`` (faithful: h fills the first d_R channels) or ``"linear"`` (a learned
            ``Linear(d_R, d_G)`` applied to h before normalisation; required when d_R > d_G).
        use_fused_loss: compute the training loss with ``flythinker.kernels.fused_linear_cross_entropy``
            (never materialises [tokens, vocab] logits); logits are then not returned unless asked.
        reward_heads: optional JSON spec of reward heads (see ``flythinker.modeling.heads``).

    The injection is zeroed at every position whose predecessor is padding (``a_{i-1} = 0``) and at
    every sequence start (``position_ids == 0``), which covers left padding and packed sequences.
    ``get_text_config()`` returns the generator's config: serving engines and transformers utilities
    read vocabulary, width and context length through it.
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
        use_fused_loss: bool = True,
        reward_heads: dict[str, dict[str, Any]] | None = None,
        **kwargs: Any,
    ):
        self.generator_config = _as_config(generator_config, "generator_config")
        self.reasoner_config = _as_config(reasoner_config, "reasoner_config")
        self.fusion_lambda = float(fusion_lambda)
        self.norm_eps = float(norm_eps)
        self.projection = projection
        self.use_fused_loss = bool(use_fused_loss)
        self.reward_heads = dict(reward_heads) if reward_heads else None
        kwargs.setdefault("tie_word_embeddings", False)  # the generator ties its own weights
        from .remote_code import default_auto_map  # always set: TRL reads config.auto_map (remote_code.py)

        kwargs["auto_map"] = {**default_auto_map(), **(kwargs.get("auto_map") or {})}
        super().__init__(**kwargs)
        self.validate_fusion()

    def validate_fusion(self) -> None:
        """Raise a clear error for impossible combinations (checked at construction, not mid-forward)."""
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {self.projection!r}")
        if self.norm_eps < 0:
            raise ValueError(f"norm_eps must be >= 0, got {self.norm_eps}")
        if self.generator_config is None or self.reasoner_config is None:
            return
        d_g, d_r = self.generator_hidden_size, self.reasoner_hidden_size
        if d_r > d_g and self.projection == "zero_pad":
            raise ValueError(
                f"reasoner width d_R={d_r} exceeds generator width d_G={d_g}: zero-padding cannot fit it; "
                "use projection='linear' (a learned Linear(d_R, d_G))"
            )

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
