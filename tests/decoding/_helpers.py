"""Shared pieces of the decoding tests: a character tokenizer, a recording streamer, engine internals."""

from __future__ import annotations

import torch

from flythinker.decoding.engine import _prepare

GENERATE_DEFAULTS = dict(
    schedule="sequential", max_new_tokens=None, do_sample=None, temperature=None, top_k=None, top_p=None,
    min_p=None, repetition_penalty=None, seed=None, eos_token_id=None, pad_token_id=0, generation_config=None,
    logits_processor=None, tokenizer=None, stop_strings=None, streamer=None, prefill_chunk=None, check_every=8,
    shrink_finished=True, threads=None, compile=False,
)


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


def decoding_for(model, input_ids, attention_mask, **kwargs):
    """The engine's per-call object (to inspect the prefill logits)."""
    args = {**GENERATE_DEFAULTS, **kwargs}
    return _prepare(model, input_ids, attention_mask, **args)
