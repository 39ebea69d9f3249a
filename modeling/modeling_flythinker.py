"""FlyThinkerForCausalLM: a reasoner's latent fused into a generator one position later (docs/design.md §1).

Read top to bottom: the pretrained base class (init), then the model: ``forward`` runs the reasoner
once, fuses its shifted, rescaled states into the generator's input embeddings through its
:class:`~flythinker.modeling.fusion.LatentFusion` (the one definition of the equation and of m̄),
runs the generator once, and computes the loss.
With a :class:`FlyThinkerCache` the same ``forward`` is the incremental decoder, so the standard
``GenerationMixin.generate()`` loop reproduces the teacher-forced forward.

Two seams live in their own modules, mixed into the model: the logits and the loss
(``loss_flythinker.py``) and the generation inputs and cache (``generation_flythinker.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .cache_flythinker import FlyThinkerCache
from .configuration_flythinker import FlyThinkerConfig
from .fusion import LatentFusion, default_position_ids, injection_gate
from .generation_flythinker import FlyThinkerGenerationMixin
from .input_checks import validate_model_inputs
from .loss_flythinker import FlyThinkerLossMixin
from .reasoner_context import check_reasoner_inputs, fuse_with_reasoner_context

# forward kwargs meant for the generator's outputs only; the reasoner gets the attention kwargs.
_GENERATOR_ONLY_KWARGS = ("output_attentions", "output_hidden_states", "return_dict")


class FusedBackboneView(nn.Module):
    """``model.base_model``: no parameters of its own; calling it runs ``owner.backbone`` (fused hidden states)."""

    _tp_plan = None
    _pp_plan = None

    def __init__(self, owner: FlyThinkerForCausalLM):
        super().__init__()
        object.__setattr__(self, "_owner", owner)  # not registered: no parameters, no state-dict keys

    def forward(self, *args: Any, **kwargs: Any) -> BaseModelOutputWithPast:
        return self._owner.backbone(*args, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self._owner.get_input_embeddings()

    def get_decoder(self) -> nn.Module:
        return self._owner.generator.get_decoder()


class FlyThinkerPreTrainedModel(PreTrainedModel):
    config_class = FlyThinkerConfig
    base_model_prefix = "flythinker"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    def _init_weights(self, module: nn.Module) -> None:
        """Covers every parameter FlyThinker adds (fusion, reward heads); sub-models init themselves."""
        std = getattr(self.config.get_text_config(), "initializer_range", 0.02)
        if isinstance(module, LatentFusion):
            module.init_weights(std)  # guarded: never overwrites loaded weights
        elif module is getattr(self, "reward_heads", None):
            from .heads import init_reward_head_weights

            init_reward_head_weights(module, std)


class FlyThinkerForCausalLM(
    FlyThinkerPreTrainedModel, FlyThinkerLossMixin, FlyThinkerGenerationMixin, GenerationMixin
):
    """Generator G + reasoner R. ``.generator`` is a standard causal LM, ``.reasoner`` a standard
    backbone (no LM head). See docs/design.md §1 for the equations this forward implements."""

    # The cache carries the last reasoner state, which cannot be rolled back to a shorter prefix:
    # generate(assistant_model=...) then fails early with transformers' own clear message.
    _is_stateful = True

    def __init__(self, config: FlyThinkerConfig):
        super().__init__(config)
        if config.generator_config is None or config.reasoner_config is None:
            raise ValueError("FlyThinkerConfig needs both generator_config and reasoner_config")
        config.validate_fusion()
        self.generator = AutoModelForCausalLM.from_config(config.generator_config)
        self.reasoner = AutoModel.from_config(config.reasoner_config)
        self.fusion = LatentFusion(config)
        if config.reward_heads:
            from .heads import build_reward_heads

            self.reward_heads = build_reward_heads(config.reward_heads, config.generator_hidden_size)
        self.post_init()

    @classmethod
    def from_components(cls, generator, reasoner, **kwargs: Any) -> FlyThinkerForCausalLM:
        """Fuse two base causal-LM checkpoints (paths or model objects; same or different widths).

        Keyword args: ``fusion_lambda``, ``norm_eps``, ``projection``, ``dtype``, ``attn_implementation``
        (default ``"sdpa"``), ``tokenizer`` (for the vocabulary check) and other FlyThinkerConfig fields.
        """
        from .loading import build_from_components

        return build_from_components(cls, generator, reasoner, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *args: Any,
        strict: bool = True,
        allow_missing: tuple[str, ...] = (),
        **kwargs: Any,
    ):
        """``PreTrainedModel.from_pretrained``, strict by default: missing, unexpected or reshaped keys raise
        (named). ``allow_missing`` key prefixes (e.g. ``("reward_heads.",)``) keep a fresh init;
        ``strict=False`` restores transformers' warn-and-initialise behaviour."""
        from .loading import strict_from_pretrained

        return strict_from_pretrained(
            super().from_pretrained,
            pretrained_model_name_or_path,
            *args,
            strict=strict,
            allow_missing=allow_missing,
            **kwargs,
        )

    # ----------------------------------------------------------------------------------------- m̄
    @property
    def mean_embedding_norm(self) -> torch.Tensor:
        """m̄ as last computed by :attr:`fusion` (``refresh_mean_embedding_norm`` brings it up to date)."""
        return self.fusion.mean_embedding_norm

    def refresh_mean_embedding_norm(self, force: bool = False) -> torch.Tensor:
        """m̄ = mean_v ‖E_G[v]‖₂ of the current table (see :meth:`LatentFusion.mean_norm`).

        m̄ follows the table by itself: after every optimizer step or autograd-visible edit (its version
        counter), and, on every eval-mode prefill, after in-place ``.data`` edits (a cheap sampled check,
        :meth:`LatentFusion.notice_table_edits`). After editing only part of a row through ``.data``, or in
        training mode, call ``refresh_mean_embedding_norm(force=True)``."""
        return self.fusion.mean_norm(self.generator.get_input_embeddings().weight, force=force)

    # ------------------------------------------------------------------------ standard accessors
    def get_input_embeddings(self) -> nn.Module:
        return self.generator.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.generator.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.generator.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.generator.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        return self.generator.get_decoder()

    def resize_token_embeddings(
        self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True
    ) -> nn.Embedding:
        """Resize the generator's and the reasoner's token tables together (both read the same ids) and
        recompute m̄ = mean_v ‖E_G[v]‖₂ of the new generator table; returns the generator's embedding."""
        embeddings = self.generator.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        if new_num_tokens is None and pad_to_multiple_of is None:
            return embeddings
        vocab_size = embeddings.weight.shape[0]
        self.reasoner.resize_token_embeddings(vocab_size, mean_resizing=mean_resizing)
        for sub_config in (self.config.generator_config, self.config.reasoner_config):
            sub_config.get_text_config().vocab_size = vocab_size
        self.vocab_size = vocab_size
        self.refresh_mean_embedding_norm(force=True)
        return embeddings

    def save_pretrained(self, save_directory, *args: Any, **kwargs: Any):
        """``PreTrainedModel.save_pretrained`` plus the remote-code shim of ``flythinker.modeling.remote_code``,
        so ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` works without importing flythinker."""
        from .remote_code import AUTO_MAP, write_remote_code

        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **AUTO_MAP}
        if kwargs.get("is_main_process", True):
            write_remote_code(save_directory)  # before super(): push_to_hub uploads what is there
        return super().save_pretrained(save_directory, *args, **kwargs)

    # ------------------------------------------------------------------------------------ fusion
    def reasoner_states(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        reasoner_cache: Cache | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The fusion's sources u = P_pre(h) − μ of h = R.backbone(x).last_hidden_state (post-final-norm)."""
        outputs = self.reasoner(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=reasoner_cache,
            use_cache=reasoner_cache is not None,
            **kwargs,
        )
        return self.fusion.source(outputs.last_hidden_state)

    def fuse(
        self,
        input_ids: torch.LongTensor,
        sources: torch.Tensor,
        gate: torch.Tensor,
        prev_source: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x̃ = E_G[x] + λ·gate·P(c ⊙ shift(u)·m̄/‖shift(u)‖) (see :class:`LatentFusion`)."""
        embedding = self.generator.get_input_embeddings()
        return self.fusion(embedding(input_ids), sources, gate, embedding.weight, prev_source)

    # ----------------------------------------------------------------------------------- forward
    def backbone(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cache: Cache | None = None,
        reasoner_input_ids: torch.LongTensor | None = None,
        reasoner_attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """One reasoner pass, the shifted injection, one generator-decoder pass: the generator's final
        hidden states (what ``model.base_model(...)`` returns, for TRL and reward heads). With
        ``config.reasoner_context`` the reasoner reads ``reasoner_input_ids`` (see ``reasoner_context.py``)."""
        if inputs_embeds is not None:
            raise ValueError(
                "FlyThinker needs input_ids: the reasoner reads the same tokens as the generator"
            )
        if input_ids is None:
            raise ValueError("input_ids is required")
        kwargs.pop("logits_to_keep", None)
        past_key_values = past_key_values if past_key_values is not None else cache
        if past_key_values is not None and not isinstance(past_key_values, FlyThinkerCache):
            raise TypeError(
                f"FlyThinker needs a FlyThinkerCache (generator + reasoner caches), got {type(past_key_values).__name__}; "
                "create one with model.new_cache()"
            )
        if use_cache and past_key_values is None:
            past_key_values = self.new_cache()
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        check_reasoner_inputs(self.config, reasoner_input_ids, reasoner_attention_mask, past_length)
        # cheap: one host sync on prefill, none per decode token
        validate_model_inputs(self.config, input_ids, attention_mask, past_length, position_ids)
        if past_length == 0 and not self.training:  # an in-place .data edit of E_G: m̄ follows it
            self.fusion.notice_table_edits(self.generator.get_input_embeddings().weight)
        kwargs.pop("return_dict", None)  # both sub-models return their output objects
        reasoner_kwargs = {k: v for k, v in kwargs.items() if k not in _GENERATOR_ONLY_KWARGS}
        if self.config.reasoner_context:
            fused, position_ids = fuse_with_reasoner_context(
                self, input_ids, attention_mask, position_ids, past_key_values, past_length,
                reasoner_input_ids, reasoner_attention_mask, **reasoner_kwargs,
            )  # fmt: skip
        else:
            fused, position_ids = self._fuse_shared(
                input_ids, attention_mask, position_ids, past_key_values, past_length, **reasoner_kwargs
            )
        return self.generator.get_decoder()(
            inputs_embeds=fused,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=past_key_values is not None,
            **kwargs,
        )

    def _fuse_shared(self, input_ids, attention_mask, position_ids, cache, past_length, **reasoner_kwargs):
        """x̃ and the position ids when the reasoner reads the generator's own tokens (the paper)."""
        if position_ids is None:
            position_ids = default_position_ids(
                attention_mask, past_length, input_ids.shape[1], input_ids.device
            )
            position_ids = position_ids.expand(input_ids.shape[0], -1)
        gate = injection_gate(attention_mask, position_ids, past_length)
        reasoner_cache = cache.reasoner_cache if cache is not None else None
        hidden = self.reasoner_states(
            input_ids, attention_mask, position_ids, reasoner_cache, **reasoner_kwargs
        )
        prev_hidden = cache.last_reasoner_state if past_length > 0 else None
        fused = self.fuse(input_ids, hidden, gate, prev_hidden)
        if cache is not None:
            cache.last_reasoner_state = hidden[:, -1]
        return fused, position_ids

    @property
    def base_model(self) -> nn.Module:
        """A parameterless view whose call is :meth:`backbone` (TRL's fused log-probs call
        ``model.base_model(...)``). Built per access so deep copies never point at another model."""
        return FusedBackboneView(self)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_logits: bool | None = None,
        cache: Cache | None = None,
        reasoner_input_ids: torch.LongTensor | None = None,
        reasoner_attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Training forward (no cache) or one incremental step (with a :class:`FlyThinkerCache`).

        Args:
            input_ids: [B, L] token ids, read by both models (``inputs_embeds`` is not supported: the
                reasoner needs the tokens).
            attention_mask: [B, past + L] 2-D mask over the whole sequence so far (1 = real token).
                Omit it with packed rows: ``position_ids`` restarting at 0 then delimit sequences.
            position_ids: [B, L]; default ``cumsum(a) - 1`` clipped at 0.
            past_key_values / cache: a :class:`FlyThinkerCache` (``cache`` is the transformers ≥ 5.x name).
            labels: [B, L] next-token targets (shifted inside, ignore_index −100).
            logits_to_keep: as in transformers: keep the last k positions' logits (0 = all).
            return_logits: with the fused loss, also compute logits (default: only when no labels).
            use_cache: build and return a :class:`FlyThinkerCache`; ``None`` reads ``config.use_cache``
                (unset by default: no cache, so packed rows stay separated).
            reasoner_input_ids / reasoner_attention_mask: [B, L_R] the reasoner's own left-padded sequence,
                whose right end is ``input_ids``' (e.g. profile + request + response so far); required with
                ``config.reasoner_context`` at the first call (not with later cached steps), refused
                without it (``flythinker.modeling.reasoner_context``).
            kwargs: ``num_items_in_batch`` for gradient accumulation; ``shift_labels`` ([B, L] targets
                already aligned with the logits, from context-parallel trainers; replace ``labels``'
                shift); ``return_dict=False`` for a tuple; ``output_attentions`` / ``output_hidden_states``
                (the generator's); attention kwargs for both sub-models.
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        shift_labels = kwargs.pop("shift_labels", None)  # already-shifted targets (context parallelism)
        return_dict = kwargs.pop("return_dict", None)
        if (
            use_cache is None
        ):  # config.use_cache when set; unset (the default): no cache, packed rows stay apart
            use_cache = getattr(self.config, "use_cache", None)
        outputs = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            cache=cache,
            reasoner_input_ids=reasoner_input_ids,
            reasoner_attention_mask=reasoner_attention_mask,
            **kwargs,
        )
        loss, logits = self._loss_and_logits(
            outputs.last_hidden_state, labels, logits_to_keep, return_logits, num_items_in_batch, shift_labels
        )
        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return (
            output if (self.config.return_dict if return_dict is None else return_dict) else output.to_tuple()
        )

    def score_rewards(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        analysis_mask: torch.Tensor | None = None,
        num_tokens: torch.Tensor | None = None,
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Every configured reward head on the fused generator's final hidden states:
        ``{head name: {dimension: [B] scores, "reward": [B], ...}}`` (see ``flythinker.modeling.heads``)."""
        heads = getattr(self, "reward_heads", None)
        if heads is None:
            raise ValueError("this model has no reward heads: set FlyThinkerConfig(reward_heads={...})")
        if self.config.reasoner_context:
            raise ValueError(
                "score_rewards does not support FlyThinkerConfig(reasoner_context=True) models yet"
            )
        hidden = self.backbone(input_ids, attention_mask=attention_mask).last_hidden_state
        return {name: head(hidden, attention_mask, analysis_mask, num_tokens) for name, head in heads.items()}
