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
from flythinker.train.reasoner_context import ReasonerContextCollator

__all__ = ["record_nll", "generate", "score_generations", "MeasureCallback", "IGNORE_INDEX"]

IGNORE_INDEX = -100


@torch.no_grad()
def record_nll(model, examples: Sequence[dict[str, Any]], collate, batch_size: int = 4) -> list[list[float]]:
    """``[[nll_r, tokens_r], …]`` for every example (``input_ids`` + ``labels``, and the reasoner's
    inputs for a reasoner-context model), in order; ``collate`` pads as the arm's training does."""
    was_training = model.training
    model.eval()
    out: list[list[float]] = []
    try:
        for start in range(0, len(examples), batch_size):
            batch = collate(list(examples[start : start + batch_size]))
            labels = batch.pop("labels")
            logits = model(**batch).logits
            targets = labels[:, 1:]
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
    model, prompts: Sequence[dict[str, Any]], tokenizer, max_new_tokens: int, batch_size: int = 12
) -> list[str]:
    """Greedy continuations of encoded ``prompts`` (left-padded batches; a reasoner-context prompt also
    hands the reasoner its own ids), up to ``max_new_tokens`` each."""
    was_training = model.training
    model.eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    texts: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            rows = list(prompts[start : start + batch_size])
            if "reasoner_input_ids" in rows[0]:
                batch = ReasonerContextCollator(pad)(rows)
            else:
                batch = PaddingCollator(pad, padding_side="left")(
                    [{"input_ids": r["input_ids"]} for r in rows]
                )
            width = batch["input_ids"].shape[1]
            out = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=eos
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
    """Per-record NLL on the view's ``user_val`` every ``every`` optimizer steps (and at the last step),
    on its ``temporal_val`` once at the end, and greedy generations of its requests when ``generate``;
    step 0's logits are compared with the base generator's on the view's probe examples. Results in
    ``self.record``."""

    def __init__(
        self,
        view,
        *,
        every: int,
        tokenizer,
        generate: bool = False,
        max_new_tokens: int = 128,
        eval_batch_size: int = 4,
        gen_batch_size: int = 12,
    ):
        self.view, self.every, self.tokenizer, self.generate = view, every, tokenizer, generate
        self.max_new_tokens, self.eval_batch_size, self.gen_batch_size = (
            max_new_tokens,
            eval_batch_size,
            gen_batch_size,
        )
        self.record: dict[str, Any] = {"evals": [], "seconds": {"measure": 0.0}}

    def _evaluate(self, model, step: int, name: str, examples) -> None:
        begin = time.perf_counter()
        per_record = record_nll(model, examples, self.view.collate, self.eval_batch_size)
        self.record["evals"].append({"step": step, "set": name, "records": per_record})
        self.record["seconds"]["measure"] += time.perf_counter() - begin

    @torch.no_grad()
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step != 0:
            return
        was_training = model.training
        model.eval()
        diffs = [
            float((model(**batch).logits - reference).abs().max()) for batch, reference in self.view.probe
        ]
        model.train(was_training)
        self.record["step0_max_abs_logit_diff"] = max(diffs)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._evaluate(model, state.global_step, "user_val", self.view.val)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._evaluate(model, state.global_step, "temporal_val", self.view.temporal)
        fusion = getattr(model, "fusion", None)
        if fusion is not None:  # how far the injection opened: tanh(α) and ‖W‖_F at the end
            gate = fusion.gate_logit
            weight = fusion.projection.weight if fusion.projection is not None else None
            self.record["injection"] = {
                "tanh_gate": None if gate is None else torch.tanh(gate.detach()).abs().mean().item(),
                "projection_frobenius": None if weight is None else weight.detach().norm().item(),
            }
        if self.generate:
            begin = time.perf_counter()
            predictions = generate(
                model, self.view.requests, self.tokenizer, self.max_new_tokens, self.gen_batch_size
            )
            self.record["seconds"]["generate"] = time.perf_counter() - begin
            self.record["generation"] = {
                "predictions": predictions,
                **score_generations(predictions, self.view.references),
            }
