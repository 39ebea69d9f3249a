"""Tokenisation of (context, policy output) pairs for reward heads, with the analysis-span mask.

The head reads ``context + output``; the ``# Analysis`` span of ``output`` (parsed by
``flythinker.rewards.sections``) is mapped to tokens through the fast tokenizer's offsets.  Rows
longer than ``max_length`` keep their last ``max_length`` tokens (the output matters most).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from flythinker.rewards.samples import EmpathySample, context_text, output_text
from flythinker.rewards.sections import parse_sections, span_token_mask


def encode_reward_texts(
    tokenizer,
    contexts: Sequence[str],
    outputs: Sequence[str],
    *,
    max_length: int = 1024,
    padding_side: str = "right",
) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask``, ``analysis_mask`` (bool) ``[B, T]`` for ``context + output``."""
    if len(contexts) != len(outputs):
        raise ValueError(f"got {len(contexts)} contexts and {len(outputs)} outputs")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            "encode_reward_texts needs a fast tokenizer (offset mappings) to locate the analysis span"
        )
    texts = [c + o for c, o in zip(contexts, outputs)]
    enc = tokenizer(texts, add_special_tokens=True, return_offsets_mapping=True)
    rows, masks = [], []
    for c, o, ids, offsets in zip(contexts, outputs, enc["input_ids"], enc["offset_mapping"]):
        span = parse_sections(o).analysis_span
        span = (span[0] + len(c), span[1] + len(c)) if span else None
        ids, offsets = ids[-max_length:], offsets[-max_length:]
        rows.append(ids)
        masks.append(span_token_mask(torch.tensor([offsets], dtype=torch.long).view(1, -1, 2), [span])[0])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    analysis = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (r, m) in enumerate(zip(rows, masks)):
        sl = slice(width - len(r), width) if padding_side == "left" else slice(0, len(r))
        input_ids[i, sl] = torch.tensor(r, dtype=torch.long)
        attention[i, sl] = 1
        analysis[i, sl] = m
    return {"input_ids": input_ids, "attention_mask": attention, "analysis_mask": analysis}


def encode_samples(tokenizer, samples: Sequence[EmpathySample], **kwargs) -> dict[str, torch.Tensor]:
    """:func:`encode_reward_texts` for samples (context from :func:`context_text`, output re-assembled)."""
    return encode_reward_texts(
        tokenizer, [context_text(s) for s in samples], [output_text(s) for s in samples], **kwargs
    )
