"""Reasoner context: the reasoner reads a longer sequence than the generator (docs/design.md §1).

With ``FlyThinkerConfig(reasoner_context=True)`` the reasoner reads its own tokens z =
``reasoner_input_ids`` (for personalization: profile + request + response so far) and the generator
reads x = ``input_ids`` (request + response so far). Each is left-padded to its own width, so the
two right ends meet. Over the whole sequence so far (prompt and every token fed since; widths W_R and
W_G, which grow together) generator column c and reasoner column c + D sit at the same distance from
the end, ``D = W_R − W_G`` (fixed for a whole decoding call)::

    u    = P_pre(R(z, a^R, pos^R).last_hidden_state) − μ      pos^R = cumsum(a^R) − 1 clipped at 0
    x̃_c = E_G[x_c] + λ·s · g_c · P_post(c ⊙ r_{c+D−1})         r_k = u_k · m̄ / ‖u_k‖ (§1)
    g_c  = a^G_c · a^R_{c+D−1}                                  (0 where c + D − 1 < 0)
    logits = G(inputs_embeds = x̃, attention_mask = a^G, position_ids = cumsum(a^G) − 1 clipped at 0)

So reasoner state c + D − 1 lands on generator column c, as state i − 1 lands on position i in the
shared model. The generator's first real token receives the state of the reasoner token just before
its counterpart: with a profile in front, the end of the profile (the point of the option). A pad
never injects and never receives; with no extra reasoner tokens (z = x) the first real token
receives nothing and the model is exactly the shared one.

Contract of the inputs (clear ``ValueError`` otherwise; the data checks cost one host sync, on the
first call only):

* the first call (training, or the prefill of a :class:`FlyThinkerCache`) gets ``reasoner_input_ids``
  [B, L_R] and optionally ``reasoner_attention_mask`` (default all ones); later calls on that cache get
  neither: both models read the same new ``input_ids``, and the reasoner's mask is the cached prompt
  mask followed by the generator mask's columns after its prompt;
* both masks left-padded (every row 0…0 1…1), and every row has at least as many real reasoner tokens
  as real generator tokens. The generator's tokens are meant to be the reasoner's last ones
  (``flythinker.train.reasoner_context`` builds them so); the equation itself needs only the alignment;
* no packing: positions come from the two masks, and ``position_ids`` may not be given.
"""

from __future__ import annotations

from typing import Any

import torch

from .fusion import default_position_ids

REASONER_INPUTS = ("reasoner_input_ids", "reasoner_attention_mask")
_BUILDER = "flythinker.train.reasoner_context.ReasonerContextBuilder"


def check_reasoner_inputs(config: Any, reasoner_input_ids, reasoner_attention_mask, past_length: int) -> None:
    """Whether reasoner inputs were given exactly when ``config.reasoner_context`` needs them."""
    given = reasoner_input_ids is not None or reasoner_attention_mask is not None
    if not config.reasoner_context:
        if given:
            raise ValueError(
                "reasoner_input_ids / reasoner_attention_mask were given, but this model's reasoner reads "
                "input_ids (FlyThinkerConfig.reasoner_context=False): drop them, or build the model with "
                "reasoner_context=True"
            )
        return
    if past_length == 0 and reasoner_input_ids is None:
        raise ValueError(
            "this model's reasoner reads its own sequence (FlyThinkerConfig.reasoner_context=True): pass "
            f"reasoner_input_ids= (and reasoner_attention_mask=) with the first call, e.g. from {_BUILDER}"
        )
    if past_length > 0 and given:
        raise ValueError(
            "reasoner_input_ids / reasoner_attention_mask go with the first call only (empty cache); later "
            "calls feed the new input_ids to both models"
        )


def _limit(config: Any, name: str) -> int | None:
    value = getattr(config.reasoner_config.get_text_config(), name, None)
    return value if isinstance(value, int) and value > 0 else None


def check_alignment(
    config: Any,
    generator_mask: torch.Tensor,
    reasoner_input_ids: torch.Tensor,
    reasoner_mask: torch.Tensor,
) -> None:
    """The prompt-time contract of the module docstring (shapes, ids, left padding, enough reasoner tokens)."""
    ids = reasoner_input_ids
    if ids.dim() != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(
            f"reasoner_input_ids must be integer token ids [batch, length], got {ids.dtype} {tuple(ids.shape)}"
        )
    if ids.shape[0] != generator_mask.shape[0] or ids.shape[1] == 0:
        raise ValueError(
            f"reasoner_input_ids {tuple(ids.shape)} must have input_ids' batch size {generator_mask.shape[0]} "
            "and at least one token"
        )
    if tuple(reasoner_mask.shape) != tuple(ids.shape):
        raise ValueError(
            f"reasoner_attention_mask {tuple(reasoner_mask.shape)} must match reasoner_input_ids {tuple(ids.shape)}"
        )
    limit = _limit(config, "max_position_embeddings")
    if limit is not None and ids.shape[1] > limit:
        raise ValueError(
            f"reasoner_input_ids has {ids.shape[1]} positions but the reasoner supports at most "
            f"max_position_embeddings={limit}: shorten the reasoner's context (its profile)"
        )
    if torch.compiler.is_compiling():
        return
    vocab = min(
        v for v in (_limit(config, "vocab_size"), config.get_text_config().vocab_size) if v is not None
    )
    g, r = generator_mask.long(), reasoner_mask.long()
    stats = torch.stack(
        [
            ids.min().long(),
            ids.max().long(),
            (g[:, 1:] < g[:, :-1]).any().long(),
            (r[:, 1:] < r[:, :-1]).any().long(),
            (r.sum(-1) < g.sum(-1)).any().long(),
        ]
    ).tolist()  # one host sync
    low, high, generator_right_padded, reasoner_right_padded, too_short = stats
    if low < 0 or high >= vocab:
        raise ValueError(
            f"reasoner_input_ids hold token id {low if low < 0 else high}, outside [0, {vocab}) (the two models' "
            "vocabulary): the tokenizer does not belong to this model"
        )
    if generator_right_padded or reasoner_right_padded:
        which = "attention_mask" if generator_right_padded else "reasoner_attention_mask"
        raise ValueError(
            f"{which} is not left-padded: with reasoner_context both sequences must be left-padded (rows "
            "0…0 1…1) so their right ends meet; pad on the left (PaddingCollator(padding_side='left'))"
        )
    if too_short:
        rows = (r.sum(-1) < g.sum(-1)).nonzero().flatten().tolist()
        raise ValueError(
            f"batch rows {rows}: the reasoner's sequence has fewer real tokens than the generator's; the "
            "reasoner must read everything the generator reads (profile + request + response so far)"
        )


def aligned_gate(generator_mask: torch.Tensor, reasoner_mask: torch.Tensor, length: int) -> torch.Tensor:
    """``g_c = a^G_c · a^R_{c+D−1}`` for the last ``length`` generator columns; both masks cover the
    whole sequence so far ([B, W_G] and [B, W_R]), D = W_R − W_G."""
    width_g, width_r = generator_mask.shape[-1], reasoner_mask.shape[-1]
    columns = torch.arange(width_g - length, width_g, device=generator_mask.device)
    previous = columns + (width_r - width_g) - 1
    reasoner_previous = reasoner_mask[:, previous.clamp_min(0)].bool() & (previous >= 0)
    return generator_mask[:, columns].bool() & reasoner_previous


def aligned_sources(sources: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reasoner states [B, L_R, d] of the prompt → (states of the generator's own columns [B, L_G, d],
    the state just before its first column [B, d] or None), by the right-end alignment."""
    offset = sources.shape[1] - length
    if offset < 0:  # a generator wider than the reasoner: its extra left columns are pads (gate 0)
        return torch.cat([sources.new_zeros(sources.shape[0], -offset, sources.shape[2]), sources], 1), None
    return sources[:, offset:], (sources[:, offset - 1] if offset > 0 else None)


def fuse_with_reasoner_context(
    model,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    cache,
    past_length: int,
    reasoner_input_ids: torch.LongTensor | None,
    reasoner_attention_mask: torch.Tensor | None,
    **reasoner_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x̃ of the module docstring for the new ``input_ids`` and the generator's position ids; runs the
    reasoner (on its prompt at the first call, on the new tokens after) and updates ``cache``."""
    if position_ids is not None:
        raise ValueError(
            "position_ids cannot be given with FlyThinkerConfig(reasoner_context=True): positions come from "
            "the two attention masks (packed rows are not supported; pad the batch instead)"
        )
    batch, length = input_ids.shape
    device = input_ids.device
    generator_mask = attention_mask
    if generator_mask is None:
        generator_mask = torch.ones(batch, past_length + length, dtype=torch.long, device=device)
    if past_length == 0:
        reasoner_ids = reasoner_input_ids.to(device)
        reasoner_mask = reasoner_attention_mask
        reasoner_mask = torch.ones_like(reasoner_ids) if reasoner_mask is None else reasoner_mask.to(device)
        check_alignment(model.config, generator_mask, reasoner_ids, reasoner_mask)
        if cache is not None:
            cache.reasoner_prompt_mask, cache.generator_prompt_length = reasoner_mask, length
    else:
        if cache.reasoner_prompt_mask is None:
            raise ValueError(
                "this cache was not filled by a reasoner-context prefill: start with an empty cache and pass "
                "reasoner_input_ids with the first call"
            )
        reasoner_ids = input_ids
        new_columns = generator_mask[:, cache.generator_prompt_length :].to(cache.reasoner_prompt_mask.dtype)
        reasoner_mask = torch.cat([cache.reasoner_prompt_mask, new_columns], dim=1)
    limit = _limit(model.config, "max_position_embeddings")
    if limit is not None and reasoner_mask.shape[1] > limit:
        raise ValueError(
            f"the reasoner's sequence has {reasoner_mask.shape[1]} positions but the reasoner supports at most "
            f"max_position_embeddings={limit}: shorten its context or ask for fewer new tokens"
        )
    reasoner_positions = default_position_ids(reasoner_mask, 0, reasoner_ids.shape[1], device)
    reasoner_cache = cache.reasoner_cache if cache is not None else None
    sources = model.reasoner_states(
        reasoner_ids, reasoner_mask, reasoner_positions, reasoner_cache, **reasoner_kwargs
    )
    gate = aligned_gate(generator_mask, reasoner_mask, length)
    if past_length == 0:
        own, previous = aligned_sources(sources, length)
    else:  # both models read the same new tokens: the states are already aligned
        own, previous = sources, cache.last_reasoner_state
    fused = model.fuse(input_ids, own, gate, previous)
    if cache is not None:
        cache.last_reasoner_state = sources[:, -1]
    positions = default_position_ids(generator_mask, past_length, length, device).expand(batch, -1)
    return fused, positions
