"""Decoding a ``FlyThinkerConfig(reasoner_context=True)`` model: the reasoner reads its own, longer prompt.

The equation and the alignment are ``flythinker.modeling.reasoner_context`` (docs/design.md §1): both
prompts are left-padded, generator column c takes the reasoner state of column c + D − 1 with
D = T_R − T_G, and from the first generated token on both models read the same token, so the decode
steps are the shared model's, the reasoner's positions being the generator's plus a per-row shift
(its extra real tokens). The prefill::

    R(reasoner prompt)                   → u_0..u_{T_R−1}     one launch, whole prompt
    G(x̃ of the generator prompt)        → logits → x_{T_G}   x̃_c = E_G[x_c] + λ·g_c·r_{c+D−1}

``sequential`` and ``processes`` run it (the runner protocol is unchanged: the reasoner's mask, cache
and buffers are sized for its own prompt); the other schedules and ``compile`` refuse it for now.
"""

from __future__ import annotations

import torch

from flythinker.modeling.reasoner_context import aligned_gate, aligned_sources

from .runners import ReasonerRunner
from .settings import DecodingSettings, check_inputs
from .steps import GeneratorSide

CONTEXT_SCHEDULES = ("sequential", "processes")


def check_reasoner_prompt(
    model, prompt_mask: torch.Tensor, reasoner_input_ids, reasoner_attention_mask, max_new_tokens: int | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The checked (reasoner ids, reasoner mask) of a call, or None for a model without reasoner context."""
    given = reasoner_input_ids is not None or reasoner_attention_mask is not None
    if not model.config.reasoner_context:
        if given:
            raise ValueError(
                "reasoner_input_ids / reasoner_attention_mask were given, but this model's reasoner reads "
                "input_ids (FlyThinkerConfig.reasoner_context=False): drop them"
            )
        return None
    if reasoner_input_ids is None:
        raise ValueError(
            "this model's reasoner reads its own prompt (FlyThinkerConfig.reasoner_context=True): pass "
            "reasoner_input_ids= (and reasoner_attention_mask=), e.g. from "
            "flythinker.train.reasoner_context.ReasonerContextBuilder.encode_prompt"
        )
    reasoner_config = model.config.reasoner_config.get_text_config()
    vocab = min(model.config.get_text_config().vocab_size, reasoner_config.vocab_size)
    reasoner_mask = check_inputs(reasoner_input_ids, reasoner_attention_mask, vocab, name="reasoner_")
    if reasoner_input_ids.shape[0] != prompt_mask.shape[0]:
        raise ValueError(
            f"reasoner_input_ids has {reasoner_input_ids.shape[0]} rows but input_ids has {prompt_mask.shape[0]}"
        )
    short = (reasoner_mask.sum(-1) < prompt_mask.sum(-1)).nonzero().flatten().tolist()
    if short:
        raise ValueError(
            f"batch rows {short}: the reasoner's prompt has fewer real tokens than the generator's; it must "
            "hold everything the generator reads (profile + request)"
        )
    context = getattr(reasoner_config, "max_position_embeddings", None)
    if (
        context is not None
        and max_new_tokens is not None
        and reasoner_input_ids.shape[1] + max_new_tokens > context
    ):
        raise ValueError(
            f"reasoner prompt length {reasoner_input_ids.shape[1]} + max_new_tokens {max_new_tokens} exceeds the "
            f"reasoner's max_position_embeddings {context}: shorten its prompt (the profile) or ask for fewer tokens"
        )
    return reasoner_input_ids, reasoner_mask


def check_context_settings(settings: DecodingSettings) -> None:
    """The schedules and options that decode a reasoner-context model (one line otherwise)."""
    if settings.schedule not in CONTEXT_SCHEDULES:
        raise ValueError(
            f"schedule={settings.schedule!r} does not support FlyThinkerConfig(reasoner_context=True) models yet: "
            "use schedule='sequential' or schedule='processes'"
        )
    if settings.compile is not None:
        raise ValueError(
            "compile does not support FlyThinkerConfig(reasoner_context=True) models yet: drop compile="
        )


@torch.no_grad()
def context_prefill(
    generator: GeneratorSide,
    runner: ReasonerRunner,
    ids: torch.Tensor,
    positions: torch.Tensor,
    mask: torch.Tensor,
    cache,
    chunk: int,
    reasoner_ids: torch.Tensor,
    reasoner_positions: torch.Tensor,
    reasoner_mask: torch.Tensor,
):
    """R on its whole prompt, then G on its prompt in chunks; returns (G's logits at the last prompt
    position, u of the reasoner's last prompt token). ``mask`` / ``reasoner_mask`` are the full
    ``[B, T + max_new]`` masks of the call (both grow by the same columns, so D stays T_R − T_G)."""
    runner.start(reasoner_ids, reasoner_positions)
    sources = runner.finish()
    runner.generator_alone()
    length = ids.shape[1]
    own, previous = aligned_sources(sources, length)
    new = mask.shape[1] - length
    gate = aligned_gate(mask[:, :length], reasoner_mask[:, : reasoner_mask.shape[1] - new], length)
    last = None
    for start in range(0, length, chunk):
        part = slice(start, start + chunk)
        last = generator.forward_chunk(
            ids[:, part], own[:, part], gate[:, part], previous, mask, positions[:, part], cache
        )
        previous = own[:, part][:, -1]
    return generator.logits(last), sources[:, -1]
