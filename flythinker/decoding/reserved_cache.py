"""A ``DynamicCache`` that writes into storage reserved for the whole call instead of concatenating.

transformers' ``DynamicLayer.update`` is ``keys = cat([keys, new], -2)``: every decode step copies the
whole cache of every layer into a fresh tensor, a cost that grows with batch × length.
:class:`ReservedLayer` allocates ``[B, H, capacity, D]`` once, copies only the new positions into
``[n, n + L)`` and returns the views ``storage[:, :, : n + L]``.

The contract is the ``DynamicLayer``'s: ``keys`` / ``values`` hold exactly the positions written so far
(so sequence lengths, mask sizes and sdpa's causal path are unchanged) and ``update`` returns them.
The values are the same numbers in the same order, only their storage differs, so attention gives
the same logits bit for bit (tests/decoding/test_reserved_cache.py). Writing past ``capacity``
doubles the storage (one copy). Any inherited method that replaces ``keys`` / ``values`` (crop, beam
reorder, batch selection) is honoured: the next ``update`` sees that they are no longer views of the
storage (they are not the objects it handed out) and reserves storage around them afresh.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are prefix views of storage for ``capacity`` positions."""

    def __init__(self, capacity: int, **kwargs):
        super().__init__(**kwargs)
        if capacity < 1:
            raise ValueError(
                f"ReservedLayer: capacity must be a positive number of positions, got {capacity}"
            )
        self.capacity = capacity
        self._key_storage: torch.Tensor | None = None
        self._value_storage: torch.Tensor | None = None
        self._views: tuple[torch.Tensor, torch.Tensor] | None = None  # the last keys / values handed out

    def _reserve(self, like_keys: torch.Tensor, like_values: torch.Tensor, capacity: int, keep: int) -> None:
        """Allocate storage for ``capacity`` positions (batch and heads as ``like_*``) and copy the first
        ``keep`` positions of the current keys / values into it."""

        def empty(like: torch.Tensor) -> torch.Tensor:
            return like.new_empty(like.shape[0], like.shape[1], capacity, like.shape[3])

        keys, values = empty(like_keys), empty(like_values)
        if keep:
            keys[:, :, :keep].copy_(self.keys)
            values[:, :, :keep].copy_(self.values)
        self._key_storage, self._value_storage = keys, values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``key_states`` / ``value_states`` [B, H, L, D] after the cached positions; return the
        keys and values of every position so far (views of the storage)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        past = self.get_seq_length()
        end = past + key_states.shape[-2]
        views = self._views
        owned = views is not None and views[0] is self.keys and views[1] is self.values
        storage = self._key_storage if (past == 0 or owned) else None
        fits = storage is not None and storage.shape[0] == key_states.shape[0] and end <= storage.shape[-2]
        if not fits:
            grown = 2 * storage.shape[-2] if storage is not None and past else 0
            like = (self.keys, self.values) if past else (key_states, value_states)
            self._reserve(*like, max(self.capacity, grown, end), past)
        self._key_storage[:, :, past:end].copy_(key_states)
        self._value_storage[:, :, past:end].copy_(value_states)
        self.keys = self._key_storage[:, :, :end]
        self.values = self._value_storage[:, :, :end]
        self._views = (self.keys, self.values)
        return self.keys, self.values

    def reset(self) -> None:
        self._key_storage = self._value_storage = self._views = None
        super().reset()


class ReservedCache(DynamicCache):
    """``DynamicCache(config=config)`` whose full-attention layers are :class:`ReservedLayer` s of
    ``capacity`` positions (the call's prompt + new tokens). Sliding-window and other special layers
    stay transformers' own."""

    def __init__(self, config, capacity: int):
        super().__init__(config=config)
        if self.layers:
            self.layers = [
                ReservedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in self.layers
            ]
        else:  # a config without layer types: layers are added lazily, one per update
            self.layer_class_to_replicate = lambda: ReservedLayer(capacity)
