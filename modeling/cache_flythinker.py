"""FlyThinkerCache: the generator's KV cache, plus the reasoner's cache and its last state.

It *is* the generator's ``DynamicCache`` (so ``generate()`` sees the usual sequence length and
mask sizes), and carries two more things that incremental decoding needs (docs/design.md §1):

* ``reasoner_cache`` — the reasoner backbone's own ``DynamicCache``;
* ``last_reasoner_state`` — ``h`` of the last position already consumed, ``[B, d]`` (after the
  optional projection), which the next step injects into the generator one position later;
* with ``FlyThinkerConfig(reasoner_context=True)`` also ``reasoner_prompt_mask`` (the reasoner prompt's
  ``[B, L_R]`` attention mask) and ``generator_prompt_length`` (L_G), set at prefill: the reasoner's mask
  at any later step is that prompt mask followed by the generator mask's columns after L_G
  (``flythinker.modeling.reasoner_context``).
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache, GenerationMixin, PretrainedConfig

#: The keyword ``GenerationMixin.prepare_inputs_for_generation`` takes the cache under: ``cache`` from
#: transformers 5.25 on (where ``past_key_values`` is deprecated), ``past_key_values`` before.
GENERATION_CACHE_KWARG = (
    "cache"
    if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    else "past_key_values"
)


class FlyThinkerCache(DynamicCache):
    """Generator KV layers + ``reasoner_cache`` + ``last_reasoner_state`` (see module docstring)."""

    def __init__(
        self,
        generator_config: PretrainedConfig | None = None,
        reasoner_config: PretrainedConfig | None = None,
    ):
        super().__init__(config=generator_config)
        self.reasoner_cache = DynamicCache(config=reasoner_config)
        self.last_reasoner_state: torch.Tensor | None = None
        self.reasoner_prompt_mask: torch.Tensor | None = None
        self.generator_prompt_length = 0

    def _per_row(self, select) -> None:
        """Apply a batch-row operation to the per-row tensors carried beside the KV layers."""
        if self.last_reasoner_state is not None:
            self.last_reasoner_state = select(self.last_reasoner_state)
        if self.reasoner_prompt_mask is not None:
            self.reasoner_prompt_mask = select(self.reasoner_prompt_mask)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self.reasoner_cache.reorder_cache(beam_idx)
        self._per_row(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self.reasoner_cache.batch_repeat_interleave(repeats)
        self._per_row(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self.reasoner_cache.batch_select_indices(indices)
        self._per_row(lambda t: t[indices])

    def reset(self) -> None:
        super().reset()
        self.reasoner_cache.reset()
        self.last_reasoner_state = None
        self.reasoner_prompt_mask = None
        self.generator_prompt_length = 0

    @property
    def is_croppable(self) -> bool:
        return False

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            "FlyThinkerCache cannot be cropped: the carried reasoner state of an earlier position is not kept "
            "(assisted/speculative decoding is not supported)"
        )
