"""Per-call decoding state: the rows still decoding (:class:`DecodeState`) and the whole batch's record
(:class:`Transcript`), plus what a call returns (:class:`GenerationOutput`, :class:`Timings`).

Per token only device work happens here (EOS flags, token writes, the repetition-penalty mask); the host
reads the flags, checks stop strings and drops finished rows in :meth:`Transcript.check`, every
``check_every`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, StaticCache

from .settings import DecodingSettings
from .steps import new_decode_cache, select_cache_rows
from .stopping import find_stop


@dataclass
class DecodeState:
    """Tensors of the b ≤ B rows still decoding, all indexed by active row (``select`` keeps a subset)."""

    rows: torch.Tensor  # [b] original batch index of each active row
    token: torch.Tensor  # [b] the newest token x_t (fed at the next step)
    position: torch.Tensor  # [b, 1] position of the last token fed
    hidden: torch.Tensor | None  # [b, d] the reasoner's state at that token (h_{t-1}); set by the prefill
    mask: torch.Tensor  # [b, T0 + N] prompt mask, then ones
    done: torch.Tensor  # [b] bool: finished (EOS, or a stop string seen by the host)
    length: torch.Tensor  # [b] tokens kept (N until the row finishes)
    seen: torch.Tensor | None  # [b, V] bool: tokens seen so far (repetition penalty), else None
    cache: StaticCache | DynamicCache  # the generator's KV cache
    # [b, 1] reasoner position − generator position (a reasoner-context model's extra real prompt
    # tokens, decoding/context.py); None when both read the same tokens
    reasoner_shift: torch.Tensor | None = None

    @classmethod
    def for_prompts(
        cls,
        input_ids,
        prompt_mask,
        max_new_tokens: int,
        generator_config,
        vocab: int = 0,
        static: bool = True,
    ):
        """The state before the prefill (``hidden`` is set by it) and the prompt positions [B, T0].

        ``vocab`` > 0 keeps the seen-token mask of the repetition penalty (prompt tokens counted);
        ``static`` picks the generator's cache kind (:func:`~flythinker.decoding.steps.new_decode_cache`)."""
        batch, device = input_ids.shape[0], input_ids.device
        positions = (prompt_mask.cumsum(-1) - 1).clamp_min(0)
        seen = None
        if vocab:
            counts = torch.zeros(batch, vocab, device=device).scatter_add_(1, input_ids, prompt_mask.float())
            seen = counts > 0  # real prompt tokens only (pads add 0)
        state = cls(
            rows=torch.arange(batch, device=device),
            token=torch.zeros(batch, dtype=torch.long, device=device),
            position=positions[:, -1:],
            hidden=None,
            mask=torch.cat([prompt_mask, prompt_mask.new_ones(batch, max_new_tokens)], dim=1),
            done=torch.zeros(batch, dtype=torch.bool, device=device),
            length=torch.full((batch,), max_new_tokens, dtype=torch.long, device=device),
            seen=seen,
            cache=new_decode_cache(generator_config, input_ids.shape[1] + max_new_tokens, static),
        )
        return state, positions

    def select(self, keep: torch.Tensor) -> None:
        """Keep active rows ``keep`` (local indices) of every per-row tensor and of the generator's cache."""
        for name in (
            "rows",
            "token",
            "position",
            "hidden",
            "mask",
            "done",
            "length",
            "seen",
            "reasoner_shift",
        ):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, keep))
        select_cache_rows(self.cache, keep)


@dataclass
class Timings:
    """Host wall-clock times (CUDA: launch times, except the synchronised first token and total)."""

    time_to_first_token_s: float = 0.0
    decode_s: float = 0.0
    total_s: float = 0.0
    new_tokens: int = 0  # the longest row
    step_s: list[float] = field(default_factory=list)  # each decode step after the first token
    generator_rows: int = 0  # Σ rows fed to the generator over all forward passes (prefill counts once)
    reasoner_rows: int = 0
    # fraction of the generator's LM-head rows the reasoner's worker computed in the decode steps
    # (processes schedule, decoding/head_split.py; 0 elsewhere)
    reasoner_head_share: float = 0.0

    @property
    def per_token_s(self) -> float:
        """Median decode step latency (0 when only one token was generated)."""
        return float(torch.tensor(self.step_s).median()) if self.step_s else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Decode tokens per second per row (after the first token)."""
        return len(self.step_s) / self.decode_s if self.decode_s > 0 else 0.0


@dataclass
class GenerationOutput:
    """``sequences`` = prompt + generated tokens ([B, T0 + n], pad after a row finishes, n = longest row)."""

    sequences: torch.Tensor
    new_tokens: torch.Tensor  # [B, n]
    lengths: list[int]  # generated tokens kept per row (EOS / stop-completing token included)
    finish_reasons: list[str]  # "eos" | "stop_string" | "length"
    texts: list[str] | None
    settings: DecodingSettings
    timings: Timings


class Transcript:
    """The whole batch's generated tokens [B, N] and per-row ends, filled step by step."""

    def __init__(self, batch: int, settings: DecodingSettings, device: torch.device, tokenizer=None):
        self.settings, self.tokenizer = settings, tokenizer
        n = settings.max_new_tokens
        self.tokens = torch.full((batch, n), settings.pad_token_id, dtype=torch.long, device=device)
        self.lengths = [n] * batch  # host copy, refreshed at each check
        self.reasons: list[str | None] = [None] * batch
        self.stop_chars: list[int | None] = [None] * batch
        eos = settings.eos_token_id
        self.eos = torch.tensor(eos, dtype=torch.long, device=device) if eos else None

    def record(self, state: DecodeState, step: int, token: torch.Tensor) -> torch.Tensor:
        """Write step ``step``'s tokens (pad for finished rows), flag EOS on the device; returns them."""
        token = token.masked_fill(state.done, self.settings.pad_token_id)
        self.tokens[:, step].index_copy_(0, state.rows, token)
        if self.eos is not None:
            newly = torch.isin(token, self.eos) & ~state.done
            state.length.masked_fill_(newly, step + 1)
            state.done |= newly
        if state.seen is not None:
            state.seen.scatter_(1, token[:, None], True)
        return token

    def check(self, state: DecodeState, step: int) -> torch.Tensor | None:
        """Host side: read the flags, end rows at stop strings; returns the local indices of the rows
        still decoding (all of them when ``shrink_finished`` is off), or None when every row is done."""
        done, rows, lengths = state.done.tolist(), state.rows.tolist(), state.length.tolist()
        stops = self.settings.stop_strings
        if stops and self.tokenizer is not None:
            # Rows not yet ended by a stop string, EOS rows included: a stop string may precede the EOS.
            live = [i for i, r in enumerate(rows) if self.reasons[r] is None]
            texts = self.tokens[[rows[i] for i in live], : step + 1].tolist() if live else []
            for i, row_tokens in zip(live, texts):
                found = find_stop(self.tokenizer, row_tokens[: min(lengths[i], step + 1)], stops)
                if found is not None:
                    (n, chars), r = found, rows[i]
                    self.reasons[r], self.stop_chars[r] = "stop_string", chars
                    self.tokens[r, n:] = self.settings.pad_token_id
                    lengths[i], done[i] = n, True
                    state.length[i], state.done[i] = n, True
        for r, length in zip(rows, lengths):
            self.lengths[r] = length
        keep = [i for i in range(len(rows)) if not done[i]]
        if not keep:
            return None
        if not self.settings.shrink_finished:
            return torch.arange(len(rows), device=state.rows.device)
        return torch.tensor(keep, device=state.rows.device)

    def text(self, row: int, upto: int | None = None) -> str:
        """Row ``row``'s text so far (up to ``upto`` tokens); a stop-string row ends right after it."""
        length = self.lengths[row] if upto is None else min(self.lengths[row], upto)
        kept = self.tokens[row, :length].tolist()
        if self.reasons[row] == "stop_string":
            return self.tokenizer.decode(kept, skip_special_tokens=False)[: self.stop_chars[row]]
        return self.tokenizer.decode(kept, skip_special_tokens=True)

    def output(self, input_ids: torch.Tensor, timings: Timings) -> GenerationOutput:
        n_max, eos = self.settings.max_new_tokens, self.settings.eos_token_id
        last = self.tokens[:, -1].tolist()
        for r, length in enumerate(self.lengths):
            if self.reasons[r] is None:
                self.reasons[r] = "eos" if length < n_max or (eos and last[r] in eos) else "length"
        n = max(self.lengths)
        new_tokens = self.tokens[:, :n]
        timings.new_tokens = n
        return GenerationOutput(
            sequences=torch.cat([input_ids, new_tokens], dim=1),
            new_tokens=new_tokens,
            lengths=list(self.lengths),
            finish_reasons=list(self.reasons),
            texts=None if self.tokenizer is None else [self.text(r) for r in range(len(self.lengths))],
            settings=self.settings,
            timings=timings,
        )
