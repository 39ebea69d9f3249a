"""Shared pieces of the decoding tests: a character tokenizer, a recording streamer, engine internals."""

from __future__ import annotations

import torch

from flythinker.decoding.engine import Call, open_call
from flythinker.decoding.settings import DecodeOptions


class CharTokenizer:
    """Token v ↦ one character (v = 0 is the pad, a special token)."""

    pad_token_id = 0
    eos_token_id = None

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(chr(ord("A") + i) for i in ids if not (skip_special_tokens and i == 0))


class RecordingStreamer:
    """A transformers-style streamer (``put`` / ``end``) that keeps what it receives."""

    def __init__(self):
        self.puts: list[torch.Tensor] = []
        self.ended = 0

    def put(self, value: torch.Tensor) -> None:
        self.puts.append(value.clone())

    def end(self) -> None:
        self.ended += 1


def call_for(
    model, input_ids, attention_mask, reasoner_input_ids=None, reasoner_attention_mask=None, **options
) -> Call:
    """The engine's per-call object (to inspect the prefill logits); sequential, pad 0 unless given."""
    options = {"schedule": "sequential", "pad_token_id": 0, **options}
    return open_call(
        model,
        input_ids,
        attention_mask,
        DecodeOptions(**options),
        streaming=False,
        reasoner_input_ids=reasoner_input_ids,
        reasoner_attention_mask=reasoner_attention_mask,
    )
