"""The two halves of a decode step and their preallocated caches (docs/design.md §1, decoding schedule).

* :class:`ReasonerSide` — the fusion's sources ``u = model.fusion.source(R.backbone(x).last_hidden_state)``.
  No LM head is ever computed on the reasoner.
* :class:`GeneratorSide` — ``x̃`` through the model's own :class:`~flythinker.modeling.fusion.LatentFusion`
  (the one definition of the equation and of m̄), the generator's decoder, and the LM head on the
  last position only.

Both run on transformers caches made once per call by :func:`new_decode_cache`: a ``StaticCache``
of ``prompt + max_new`` tokens where fixed shapes matter (``torch.compile``, CUDA), receiving the full
preallocated ``[B, max_len]`` attention mask (future columns are excluded by causality); a
``DynamicCache`` on CPU without compile, receiving only the mask columns written so far
(:func:`attention_window`), so an unpadded prompt takes sdpa's causal path instead of an explicit
``[T, max_len]`` mask (a 1,536-token prefill of SmolLM2 on 2 cores: 3.06 s instead of 3.82 s).
From :data:`RESERVED_CACHE_FROM` positions on, that ``DynamicCache`` is a :class:`ReservedCache`,
which writes each step into storage reserved for the call instead of concatenating.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache, StaticCache

from flythinker.modeling.fusion import injection_gate

from .reserved_cache import ReservedCache

RESERVED_CACHE_FROM = 384
"""Calls of at least this many positions (prompt + new tokens) decode on a :class:`ReservedCache`
instead of a ``DynamicCache`` when the cache is not static. Measured per step, paired, SmolLM2-135M on
one CPU core (``bench/bench_kv_cache.py``, ``bench/results/kv_cache_cpu.md``): below it the two are
equal within noise, above it the reserved cache gains as the cache grows (no concatenation)."""


def uses_reserved_cache(max_len: int, static: bool) -> bool:
    """Whether :func:`new_decode_cache` gives a :class:`ReservedCache` for these arguments."""
    return not static and max_len >= RESERVED_CACHE_FROM


def new_decode_cache(config, max_len: int, static: bool = True) -> StaticCache | DynamicCache:
    """An empty cache for one call of ``max_len`` positions: a ``StaticCache`` (allocated on the first
    update) when ``static``; else a ``DynamicCache`` that grows with the tokens fed, storage reserved for
    ``max_len`` positions from :data:`RESERVED_CACHE_FROM` on (:class:`ReservedCache`, the same values
    bit for bit)."""
    if static:
        return StaticCache(config=config, max_cache_len=max_len)
    if uses_reserved_cache(max_len, static):
        return ReservedCache(config, max_len)
    return DynamicCache(config=config)


def attention_window(attention_mask: torch.Tensor, cache, length: int) -> torch.Tensor:
    """The 2D mask a forward of ``length`` new tokens gets: the whole preallocated ``[B, max_len]``
    mask for a static cache (fixed shapes), its first ``past + length`` columns for a dynamic one."""
    if isinstance(cache, StaticCache):
        return attention_mask
    return attention_mask[:, : cache.get_seq_length() + length]


def select_cache_rows(cache: StaticCache | DynamicCache, rows: torch.Tensor) -> None:
    """Keep only batch ``rows`` of every layer (a copy into smaller static tensors)."""
    for layer in cache.layers:
        if getattr(layer, "is_initialized", False):
            layer.keys = layer.keys.index_select(0, rows.to(layer.keys.device))
            layer.values = layer.values.index_select(0, rows.to(layer.values.device))
            layer.batch_size = layer.keys.shape[0]
            if isinstance(cache, StaticCache) and not torch.compiler.is_compiling():
                torch._dynamo.mark_static_address(layer.keys)
                torch._dynamo.mark_static_address(layer.values)


class ReasonerSide(nn.Module):
    """The reasoner backbone and the fusion's source map: tokens → u, width d_R (or d_G)."""

    def __init__(self, reasoner: nn.Module, fusion: nn.Module):
        super().__init__()
        self.reasoner = reasoner
        self.fusion = fusion

    @property
    def config(self):
        return self.reasoner.config

    @property
    def width(self) -> int:
        """Width of the states this side returns (u, as carried between decode steps)."""
        return self.fusion.source_width

    def forward(self, input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
        hidden = self.reasoner(
            input_ids=input_ids,
            attention_mask=attention_window(attention_mask, cache, input_ids.shape[1]),
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        return self.fusion.source(hidden)


class GeneratorSide:
    """Fusion + generator decoder + last-position LM head for one FlyThinker model."""

    def __init__(self, model):
        self.model = model
        self.embed = model.generator.get_input_embeddings()
        self.decoder = model.generator.get_decoder()
        self.fusion = model.fusion  # m̄ is cached there until the table changes

    def forward_chunk(
        self, input_ids, reasoner_hidden, gate, prev_hidden, attention_mask, position_ids, cache
    ):
        """Generator over a chunk: ``reasoner_hidden`` [B, L, d] holds h for the chunk's own positions,
        ``prev_hidden`` [B, d] (or None at the prompt start) the state just before it. Returns the
        last position's hidden state [B, d_G]."""
        fused = self.fusion(self.embed(input_ids), reasoner_hidden, gate, self.embed.weight, prev_hidden)
        hidden = self.decoder(
            inputs_embeds=fused,
            attention_mask=attention_window(attention_mask, cache, input_ids.shape[1]),
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        return hidden[:, -1]

    def logits(self, last_hidden: torch.Tensor) -> torch.Tensor:
        return self.model.generator_logits(last_hidden)

    def finish_logits(self, raw: torch.Tensor) -> torch.Tensor:
        """Logits from the LM head's raw outputs (computed elsewhere, e.g. in row slices)."""
        return self.model.scale_generator_logits(raw)

    def step(self, tokens, prev_hidden, attention_mask, position_ids, cache, head=None) -> torch.Tensor:
        """One token per row: x̃_t = E_G[x_t] + λ·r_{t-1}; returns logits [B, V]. ``head(self, last)``,
        when given, computes the logits from the last hidden state (a runner's ``logits``)."""
        gate = position_ids != 0  # a_{t-1} = 1 for every generated position (prompts are non-empty)
        # Only prev_hidden is read for a one-token chunk (row 0 of the shifted sources).
        last = self.forward_chunk(
            tokens, prev_hidden[:, None], gate, prev_hidden, attention_mask, position_ids, cache
        )
        return self.logits(last) if head is None else head(self, last)


def prefill_gate(attention_mask: torch.Tensor, position_ids: torch.Tensor, start: int) -> torch.Tensor:
    """Injection gate of prompt positions [start, start + L): ``a_{i-1} · 1[pos_i != 0]``."""
    end = start + position_ids.shape[1]
    return injection_gate(attention_mask[:, :end], position_ids, start)
