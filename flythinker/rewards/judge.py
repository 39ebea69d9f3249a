"""A local LM judge for PERM / PereGRM: scores read from next-token probabilities, no parsing.

For a judge prompt (``flythinker.rewards.prompts``) rendered with the tokenizer's chat template and
the assistant turn pre-filled with ``"Score:"`` (``"Score: "`` for tokenizers that encode " 3" as a
space token followed by "3", such as SmolLM2's), one forward pass gives the next-token distribution
p(·).  For each digit k ∈ {1..5} the probabilities of every single-token spelling of k that the
tokenizer has (``"k"``, ``" k"``, ``"▁k"``, ``"Ġk"``) are summed, renormalised over the five digits,
and the score is the expectation

    s = Σ_k k · p(k) / Σ_j p(j)  ∈ [1, 5]

so a score always exists (never a parse failure) and varies smoothly.  Prompts are batched with
left padding and explicit ``position_ids = cumsum(mask) − 1`` so a prompt's score does not depend on
the batch it is in (up to float rounding); batches are formed by length to limit padding.  The
model is put in eval mode for the call and restored after, and runs under ``torch.no_grad``, so
scores are deterministic.

Bystander: each of the five items is scored on 1–5 and mapped to 0–20 by (s − 1)·5; the bystander
score is their sum ∈ [0, 100].

PereGRM: samples with memories but no criteria first get criteria generated greedily by the same
local LM (:meth:`LocalJudge.generate_criteria`, cached per user/query), then every prompt is
conditioned on memories + criteria.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from flythinker.rewards.formula import ALL_DIMENSIONS, EMPATHY_DIMENSIONS
from flythinker.rewards.prompts import (
    BYSTANDER_ITEMS,
    SCORE_PREFIX,
    bystander_messages,
    criteria_generation_messages,
    dimension_messages,
)
from flythinker.rewards.samples import EmpathySample

Messages = list[dict[str, str]]


def digit_token_ids(tokenizer, digits: Sequence[int] = (1, 2, 3, 4, 5)) -> list[list[int]]:
    """For each digit, every token id that spells it alone (with or without a leading space)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    vocab = tokenizer.get_vocab()
    out = []
    for d in digits:
        ids: set[int] = set()
        for spelling in (str(d), f" {d}"):
            enc = tokenizer.encode(spelling, add_special_tokens=False)
            if len(enc) == 1 and enc[0] != unk:
                ids.add(int(enc[0]))
        for token in (str(d), f"▁{d}", f"Ġ{d}"):
            if token in vocab and vocab[token] != unk:
                ids.add(int(vocab[token]))
        out.append(sorted(ids))
    missing = [d for d, ids in zip(digits, out) if not ids]
    if missing:
        raise ValueError(
            f"the judge tokenizer has no single token for digit(s) {missing}; a next-token judge needs "
            f"'1'..'5' (or ' 1'..' 5') in its vocabulary"
        )
    return out


def expected_digit_score(logits: torch.Tensor, digit_ids: list[list[int]]) -> torch.Tensor:
    """E[k] under the next-token distribution restricted to the digits' tokens. logits: ``[N, V]``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    per_digit = torch.stack([torch.logsumexp(logp[:, ids], dim=-1) for ids in digit_ids], dim=-1)
    probs = torch.softmax(per_digit, dim=-1).double()
    values = torch.arange(1, len(digit_ids) + 1, dtype=torch.float64, device=probs.device)
    return (probs * values).sum(-1)


class DimensionScoring:
    """PERM / PereGRM scoring shared by every judge: the prompts, criteria and bystander mapping.

    A judge supplies ``expected_scores(conversations) -> [1, 5] per conversation`` and
    ``generate_criteria(samples) -> criteria text per sample``: :class:`LocalJudge` from a local
    LM's next-token probabilities, :class:`flythinker.rewards.endpoint_judge.EndpointJudge` from an
    OpenAI-compatible endpoint's replies.
    """

    def score(
        self, samples: Sequence[EmpathySample], dimensions: Sequence[str] = ALL_DIMENSIONS
    ) -> dict[str, list[float]]:
        """Scores per dimension: resonation / expression / reception ∈ [1, 5], bystander ∈ [0, 100].

        Personalized samples (memories given, criteria ``None``) get criteria generated first.
        The bystander's five items are returned too, as ``"bystander/<item>"`` ∈ [0, 20].
        """
        unknown = [d for d in dimensions if d not in ALL_DIMENSIONS]
        if unknown:
            raise ValueError(f"unknown dimensions {unknown}; expected a subset of {ALL_DIMENSIONS}")
        samples = list(samples)
        need = [i for i, s in enumerate(samples) if s.memories and s.criteria is None]
        if need:
            for i, c in zip(need, self.generate_criteria([samples[i] for i in need])):
                samples[i] = EmpathySample(**{**samples[i].__dict__, "criteria": c})
        convs: list[Messages] = []
        slots: list[tuple[str, int]] = []
        for d in dimensions:
            if d in EMPATHY_DIMENSIONS:
                convs += [dimension_messages(d, s) for s in samples]
                slots.append((d, len(samples)))
            else:
                for item in BYSTANDER_ITEMS:
                    convs += [bystander_messages(item, s) for s in samples]
                    slots.append((f"bystander/{item}", len(samples)))
        flat = self.expected_scores(convs).tolist()
        out: dict[str, list[float]] = {}
        pos = 0
        for name, n in slots:
            vals = flat[pos : pos + n]
            pos += n
            out[name] = [(v - 1.0) * 5.0 for v in vals] if name.startswith("bystander/") else vals
        if "bystander" in dimensions:
            items = [out[f"bystander/{item}"] for item in BYSTANDER_ITEMS]
            out["bystander"] = [sum(col) for col in zip(*items)]
        return out


class LocalJudge(DimensionScoring):
    """Scores PERM / PereGRM dimensions with any local causal LM and its tokenizer.

    Args:
        model: a transformers causal LM (its forward must return ``logits``).
        tokenizer: the model's tokenizer; its chat template is used when it has one.
        batch_size: prompts per forward pass.
        max_length: prompts longer than this keep their last ``max_length`` tokens (with a warning).
        show_progress: tqdm bar over batches.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 8,
        max_length: int = 4096,
        score_prefix: str = SCORE_PREFIX,
        show_progress: bool = False,
        criteria_max_new_tokens: int = 96,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.score_prefix = score_prefix
        self.show_progress = show_progress
        self.criteria_max_new_tokens = int(criteria_max_new_tokens)
        self.digit_ids = digit_token_ids(tokenizer)
        # Tokenizers that split " 3" into a space token and "3" (SmolLM2's "Ġ" + "3") would spend the
        # next token on the space: end the pre-fill with that space so the next token is the digit.
        if len(tokenizer.encode(" 3", add_special_tokens=False)) > 1 and not score_prefix.endswith(" "):
            self.score_prefix = score_prefix + " "
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self._criteria_cache: dict[tuple, str] = {}

    # ---------------------------------------------------------------- prompt rendering / batching
    def render(self, messages: Messages, prefix: str | None = None) -> list[int]:
        """Token ids of ``messages`` + an open assistant turn + ``prefix`` (default ``"Score:"``)."""
        prefix = self.score_prefix if prefix is None else prefix
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefix
            ids = tok.encode(text, add_special_tokens=False)
        else:
            text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages)
            ids = tok.encode(text + "Assistant: " + prefix, add_special_tokens=True)
        if len(ids) > self.max_length:
            warnings.warn(
                f"judge prompt of {len(ids)} tokens truncated to its last {self.max_length}", stacklevel=2
            )
            ids = ids[-self.max_length :]
        return ids

    def _left_pad(self, rows: list[list[int]], device) -> dict[str, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        return {
            "input_ids": ids.to(device),
            "attention_mask": mask.to(device),
            "position_ids": pos.to(device),
        }

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def expected_scores(self, conversations: Sequence[Messages]) -> torch.Tensor:
        """One score in [1, 5] (float64, CPU) per conversation; one forward pass per batch."""
        if not conversations:
            return torch.empty(0, dtype=torch.float64)
        rows = [self.render(m) for m in conversations]
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        out = torch.empty(len(rows), dtype=torch.float64)
        starts = range(0, len(rows), self.batch_size)
        if self.show_progress:
            starts = tqdm(starts, desc="judge", unit="batch")
        was_training = self.model.training
        self.model.eval()
        try:
            for s in starts:
                idx = order[s : s + self.batch_size]
                batch = self._left_pad([rows[i] for i in idx], self._device())
                try:
                    logits = self.model(**batch, logits_to_keep=1).logits[:, -1]
                except TypeError:  # a model without `logits_to_keep`
                    logits = self.model(**batch).logits[:, -1]
                out[idx] = expected_digit_score(logits, self.digit_ids).cpu()
        finally:
            self.model.train(was_training)
        return out

    # ---------------------------------------------------------------- PereGRM criteria
    @torch.no_grad()
    def generate_criteria(
        self, samples: Sequence[EmpathySample], situations: Sequence[str] | None = None
    ) -> list[str]:
        """PereGRM: per-user, per-query criteria text, generated greedily (cached by user and query)."""

        keys = [(s.persona, tuple(s.memories), s.query) for s in samples]
        todo = [i for i, k in enumerate(keys) if k not in self._criteria_cache]
        if todo:
            rows = [
                self.render(
                    criteria_generation_messages(
                        samples[i].query,
                        samples[i].memories,
                        samples[i].persona,
                        situations[i] if situations else "",
                    ),
                    prefix="-",
                )
                for i in todo
            ]
            config = GenerationConfig(
                max_new_tokens=self.criteria_max_new_tokens,
                do_sample=False,
                pad_token_id=self.pad_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
            was_training = self.model.training
            self.model.eval()
            try:
                for s in range(0, len(todo), self.batch_size):
                    chunk = todo[s : s + self.batch_size]
                    batch = self._left_pad(rows[s : s + self.batch_size], self._device())
                    batch.pop("position_ids")
                    gen = self.model.generate(**batch, generation_config=config)
                    new = gen[:, batch["input_ids"].shape[1] :]
                    for i, seq in zip(chunk, new):
                        text = self.tokenizer.decode(seq, skip_special_tokens=True).strip()
                        self._criteria_cache[keys[i]] = "- " + text if text else "- (no criteria)"
            finally:
                self.model.train(was_training)
        return [self._criteria_cache[k] for k in keys]
