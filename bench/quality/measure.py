"""Measurements of one quality run, taken from inside ``flythinker train``'s Trainer by a callback.

* Teacher-forced NLL per record: ``nll_r = −Σ_t log p(y_t | y_<t, prompt)`` over the record's label
  tokens (the target and its end token) and ``tokens_r``, the number of those tokens; a set's NLL is
  ``Σ_r nll_r / Σ_r tokens_r`` (nats per target token, token-weighted over records).
* Greedy generations (``model.generate``, left-padded batches) scored per request with ROUGE-L
  (F-measure) and METEOR (``flythinker.evaluation.metrics``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from flythinker.evaluation.metrics import meteor_scores, rouge_scores
from flythinker.train.collators import PaddingCollator

__all__ = ["record_nll", "generate", "score_generations", "MeasureCallback", "IGNORE_INDEX"]

IGNORE_INDEX = -100


@torch.no_grad()
def record_nll(
    model, examples: Sequence[dict[str, Any]], pad_id: int, batch_size: int = 4
) -> list[list[float]]:
    """``[[nll_r, tokens_r], …]`` for every example (``input_ids`` + ``labels``), in order."""
    was_training = model.training
    model.eval()
    collate = PaddingCollator(pad_id, padding_side="right")
    out: list[list[float]] = []
    try:
        for start in range(0, len(examples), batch_size):
            batch = collate(list(examples[start : start + batch_size]))
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            targets = batch["labels"][:, 1:]
            logp = F.log_softmax(logits[:, :-1].double(), dim=-1)
            keep = targets != IGNORE_INDEX
            picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            nll = -(picked * keep).sum(-1)
            for row in range(len(nll)):
                out.append([float(nll[row]), int(keep[row].sum())])
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def generate(
    model, prompts: Sequence[Sequence[int]], tokenizer, max_new_tokens: int, batch_size: int = 12
) -> list[str]:
    """Greedy continuations of ``prompts`` (token ids), left-padded, up to ``max_new_tokens`` each."""
    was_training = model.training
    model.eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    texts: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            rows = [list(p) for p in prompts[start : start + batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=eos,
            )
            texts += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return [t.strip() for t in texts]


def score_generations(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Per-request ROUGE-L F-measure and METEOR."""
    return {
        "rougeL": rouge_scores(predictions, references, rouge_types=("rougeL",))["rougeL"],
        "meteor": meteor_scores(predictions, references),
    }


class MeasureCallback(TrainerCallback):
    """Per-record NLL on ``eval_sets`` every ``every`` optimizer steps (and at the last step), then on
    ``final_sets`` once, and greedy generations when ``requests`` are given; results in ``self.record``."""

    def __init__(
        self,
        *,
        pad_id: int,
        every: int,
        eval_sets: dict[str, Sequence[dict[str, Any]]],
        final_sets: dict[str, Sequence[dict[str, Any]]],
        tokenizer=None,
        requests: Sequence[Sequence[int]] = (),
        references: Sequence[str] = (),
        max_new_tokens: int = 128,
        eval_batch_size: int = 4,
        gen_batch_size: int = 12,
        probe: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None,
    ):
        self.pad_id, self.every = pad_id, every
        self.eval_sets, self.final_sets = eval_sets, final_sets
        self.tokenizer, self.requests, self.references = tokenizer, requests, references
        self.max_new_tokens, self.eval_batch_size, self.gen_batch_size = (
            max_new_tokens,
            eval_batch_size,
            gen_batch_size,
        )
        self.probe = probe  # (batch, the base generator's logits on it): step 0 must equal them exactly
        self.record: dict[str, Any] = {"evals": [], "seconds": {"measure": 0.0}}

    def _evaluate(self, model, step: int, sets: dict[str, Sequence[dict[str, Any]]]) -> None:
        begin = time.perf_counter()
        for name, examples in sets.items():
            per_record = record_nll(model, examples, self.pad_id, self.eval_batch_size)
            self.record["evals"].append({"step": step, "set": name, "records": per_record})
        self.record["seconds"]["measure"] += time.perf_counter() - begin

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.probe is not None and state.global_step == 0:
            batch, reference = self.probe
            was_training = model.training
            model.eval()
            with torch.no_grad():
                logits = model(**batch).logits
            model.train(was_training)
            real = batch["attention_mask"].bool()  # pad positions' logits are not defined alike
            self.record["step0_max_abs_logit_diff"] = float((logits - reference)[real].abs().max())

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._evaluate(model, state.global_step, self.eval_sets)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._evaluate(model, state.global_step, self.final_sets)
        if self.requests:
            begin = time.perf_counter()
            predictions = generate(
                model, self.requests, self.tokenizer, self.max_new_tokens, self.gen_batch_size
            )
            self.record["seconds"]["generate"] = time.perf_counter() - begin
            self.record["generation"] = {
                "predictions": predictions,
                **score_generations(predictions, self.references),
            }
