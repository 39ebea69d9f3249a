"""FlyThinkerCache: the generator's KV cache, plus the reasoner's cache and its last state.

It *is* the generator's ``DynamicCache`` (so ``generate()`` sees the usual sequence length and
mask sizes), and carries two more things that incremental decoding needs (docs/design.md §1):

* ``reasoner_cache`` — the reasoner backbone's own ``DynamicCache``;
* ``last_reasoner_state`` — ``h`` of the last position already consumed, ``[B, d]`` (after the
  optional projection), which the next step injects into the generator one position later.
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

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self.reasoner_cache.reorder_cache(beam_idx)
        if self.last_reasoner_state is not None:
            self.last_reasoner_state = self.last_reasoner_state.index_select(
                0, beam_idx.to(self.last_reasoner_state.device)
            )

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self.reasoner_cache.batch_repeat_interleave(repeats)
        if self.last_reasoner_state is not None:
            self.last_reasoner_state = self.last_reasoner_state.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self.reasoner_cache.batch_select_indices(indices)
        if self.last_reasoner_state is not None:
            self.last_reasoner_state = self.last_reasoner_state[indices]

    def reset(self) -> None:
        super().reset()
        self.reasoner_cache.reset()
        self.last_reasoner_state = None

    @property
    def is_croppable(self) -> bool:
        return False

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            "FlyThinkerCache cannot be cropped: the carried reasoner state of an earlier position is not kept "
            "(assisted/speculative decoding is not supported)"
        )
