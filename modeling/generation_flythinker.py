"""Incremental decoding of :class:`FlyThinkerForCausalLM` with transformers' ``generate()``.

A mixin of the model: :meth:`FlyThinkerGenerationMixin.prepare_inputs_for_generation` hands every step a
:class:`~flythinker.modeling.cache_flythinker.FlyThinkerCache` (generator KV + reasoner KV + last reasoner
state), so the standard ``GenerationMixin.generate()`` loop reproduces the teacher-forced forward. It must
precede ``GenerationMixin`` in the model's bases (its ``super()`` call reaches transformers' method).
"""

from __future__ import annotations

from .cache_flythinker import GENERATION_CACHE_KWARG, FlyThinkerCache
from .reasoner_context import REASONER_INPUTS


class FlyThinkerGenerationMixin:
    """The FlyThinker cache and generation inputs; mixed into :class:`FlyThinkerForCausalLM`."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() must not build a plain DynamicCache: prepare_inputs_for_generation builds ours.
        return False

    def new_cache(self) -> FlyThinkerCache:
        """An empty cache for incremental decoding (generator KV + reasoner KV + last reasoner state)."""
        return FlyThinkerCache(self.config.generator_config, self.config.reasoner_config)

    def prepare_inputs_for_generation(self, input_ids, cache=None, past_key_values=None, **kwargs):
        """transformers' inputs, a :class:`FlyThinkerCache` (under the installed transformers' name), and
        the reasoner's prompt at prefill only."""
        cache = cache if cache is not None else past_key_values  # generate()'s name varies by version
        kwargs.pop("inputs_embeds", None)
        if cache is None and kwargs.get("use_cache", True):
            cache = self.new_cache()
        reasoner_inputs = {name: kwargs.pop(name, None) for name in REASONER_INPUTS}
        if self.config.reasoner_context:
            if cache is None:
                raise ValueError(
                    "generate(use_cache=False) is not supported with FlyThinkerConfig(reasoner_context=True): "
                    "the reasoner's prompt is read once into the cache; drop use_cache=False"
                )
            kwargs.pop("position_ids", None)  # computed from the two masks
        kwargs[GENERATION_CACHE_KWARG] = cache
        model_inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        model_inputs.pop("inputs_embeds", None)
        if cache is None or cache.get_seq_length() == 0:
            model_inputs.update({k: v for k, v in reasoner_inputs.items() if v is not None})
        return model_inputs
