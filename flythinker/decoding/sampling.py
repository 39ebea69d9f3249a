"""Explicit token selection: greedy, temperature, top-k, top-p, min-p, repetition penalty, seed.

Every setting is explicit: :func:`~flythinker.decoding.settings.resolve_sampling` merges keyword
arguments over an optional transformers ``GenerationConfig`` and returns a frozen
:class:`~flythinker.decoding.settings.SamplingSettings` that travels with the output.

Processing order (the order transformers applies them)::

    s = logits (fp32, fp64 for fp64 models)
    s = repetition_penalty(s)     s_v / ρ if s_v > 0 else s_v · ρ, for tokens v already seen in the row
    s = logits_processor(ids, s)  an optional user ``LogitsProcessorList``
    greedy:  x = argmax s
    sample:  s = s / T;  keep top-k;  keep the smallest set with mass ≥ top-p;  drop p_v < min-p · max p
             x = argmax_v  p_v / q_v,   q_v ~ Exp(1)  (the exponential race: x ~ Categorical(p))

"Seen" counts the real prompt tokens and the generated ones (pads excluded; transformers also
penalises pad ids). The exponential noise comes from a ``torch.Generator`` seeded by the engine and
is drawn for *every original row* at every step, on the generator's side, so the tokens do not depend
on the schedule, on when finished rows leave the batch, or on the global RNG state.
"""

from __future__ import annotations

import torch

from .settings import SamplingSettings


def apply_repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """``s_v / ρ`` (positive) or ``s_v · ρ`` (negative) where ``seen[b, v]``; ``seen`` is [B, V] bool."""
    penalised = torch.where(scores > 0, scores / penalty, scores * penalty)
    return torch.where(seen, penalised, scores)


def filter_logits(scores: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p filtering (removed entries become −inf)."""
    scores = scores / settings.temperature
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
    if 0 < settings.top_k < scores.shape[-1]:
        kth = torch.topk(scores, settings.top_k, dim=-1).values[..., -1:]
        scores = torch.where(scores < kth, neg_inf, scores)
    if settings.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        probs = sorted_scores.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # mass of the strictly better tokens
        drop_sorted = mass_before > settings.top_p
        drop_sorted[..., 0] = False  # always keep the best token
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = torch.where(drop, neg_inf, scores)
    if settings.min_p > 0.0:
        probs = scores.softmax(-1)
        threshold = settings.min_p * probs.amax(-1, keepdim=True)
        scores = torch.where(probs < threshold, neg_inf, scores)
    return scores


class TokenSelector:
    """Turns the generator's last-position logits into tokens, owning the seeded noise generator.

    ``select(logits, rows, seen, ids_fn)``: ``rows`` are the original batch indices of the active rows
    (a tensor), ``seen`` the [B_active, V] bool mask for the repetition penalty (or None), ``ids_fn`` a
    callable returning the [B_active, L] token ids so far (only called for a user LogitsProcessorList).
    """

    def __init__(
        self, settings: SamplingSettings, batch_size: int, device: torch.device, logits_processor=None
    ):
        self.settings = settings
        self.batch_size = batch_size
        self.logits_processor = logits_processor
        self.noise_generator = None
        if settings.do_sample:
            self.noise_generator = torch.Generator(device=device)
            self.noise_generator.manual_seed(settings.seed)

    def select(
        self, logits: torch.Tensor, rows: torch.Tensor, seen: torch.Tensor | None, ids_fn=None
    ) -> torch.Tensor:
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        scores = logits.to(dtype)
        if seen is not None and self.settings.repetition_penalty != 1.0:
            scores = apply_repetition_penalty(scores, seen, self.settings.repetition_penalty)
        if self.logits_processor:
            scores = self.logits_processor(ids_fn(), scores)
        if not self.settings.do_sample:
            return scores.argmax(-1)
        scores = filter_logits(scores, self.settings)
        noise = torch.empty((self.batch_size, scores.shape[-1]), dtype=dtype, device=scores.device)
        noise.exponential_(generator=self.noise_generator)
        probs = scores.softmax(-1)
        return (probs / noise.index_select(0, rows)).argmax(-1)
