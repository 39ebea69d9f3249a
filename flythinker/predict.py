"""Generating predictions for personalized records, batch by batch, with explicit decoding settings.

Prompts are the same ones training used (``PromptBuilder.encode_prompt``), left-padded per batch; a
``ReasonerContextBuilder`` adds the reasoner's own prompts for ``reasoner_context`` models.
Every setting is explicit and written next to the predictions: nothing is inherited silently from
a checkpoint's generation config.

Predictions can be written incrementally (:class:`PredictionLog`): each finished batch appends one
JSONL row per record, flushed and fsynced, so a killed run keeps every finished prediction and a
rerun resumes where it stopped. Batches are fixed slices of the record list (records
``[k·B, (k+1)·B)``) and each batch is decoded with the same seed, so a resumed run decodes exactly
the batches an uninterrupted one would and its file is identical.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class PredictionSettings:
    """Decoding options; greedy unless ``do_sample``."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0
    batch_size: int = 8
    schedule: str = "sequential"  # batched throughput; "concurrent" wins on small-batch latency

    def validate(self) -> None:
        """Range checks naming the ``flythinker generate`` option, the value and what is allowed."""
        for name, low in (("max_new_tokens", 1), ("batch_size", 1), ("top_k", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {low}; got {value!r}")
        for name, low, high in (
            ("temperature", 0.0, None),
            ("top_p", 0.0, 1.0),
            ("repetition_penalty", 0.0, None),
        ):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and math.isfinite(value) and value > low
            ok = ok and (high is None or value <= high)
            if not ok:
                allowed = f"a finite number > {low:g}" + (f" and <= {high:g}" if high is not None else "")
                raise ValueError(f"--{name.replace('_', '-')} must be {allowed}; got {value!r}")
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"--do-sample must be true or false; got {self.do_sample!r}")

    def generate_kwargs(self, tokenizer) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_k=self.top_k or None, top_p=self.top_p)
        else:
            kwargs.update(temperature=None, top_k=None, top_p=None)
        return kwargs


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def _decode_batch(
    model, input_ids, attention_mask, settings: PredictionSettings, tokenizer, reasoner_inputs=None
) -> torch.Tensor:
    """New tokens [B, n] (EOS-padded rows) from the fast engine when the model is a FlyThinker.
    ``reasoner_inputs``: ``reasoner_input_ids`` / ``reasoner_attention_mask`` of a reasoner-context model."""
    reasoner_inputs = reasoner_inputs or {}
    from flythinker.modeling.modeling_flythinker import FlyThinkerForCausalLM

    if isinstance(model, FlyThinkerForCausalLM) and settings.schedule != "hf":
        from flythinker import decoding

        out = decoding.generate(
            model,
            input_ids,
            attention_mask=attention_mask,
            schedule=settings.schedule,
            max_new_tokens=settings.max_new_tokens,
            do_sample=settings.do_sample,
            temperature=settings.temperature if settings.do_sample else None,
            top_k=settings.top_k or None,
            top_p=settings.top_p if settings.do_sample else None,
            repetition_penalty=settings.repetition_penalty,
            seed=settings.seed,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **reasoner_inputs,
        )
        return out.sequences[:, input_ids.shape[1] :]
    torch.manual_seed(settings.seed)
    sequences = model.generate(
        input_ids, attention_mask=attention_mask, **reasoner_inputs, **settings.generate_kwargs(tokenizer)
    )
    return sequences[:, input_ids.shape[1] :]


@torch.no_grad()
def generate_predictions(
    model,
    tokenizer,
    records,
    builder,
    settings: PredictionSettings,
    progress: bool = True,
    *,
    done: int = 0,
    on_batch: Callable[[int, list[dict[str, Any]]], None] | None = None,
):
    """Generate for every record from ``done`` on; returns (rows, stats).

    Each row: ``{"prediction", "prompt_tokens", "new_tokens"}``; write them with
    :func:`flythinker.evaluation.write_predictions_jsonl` (``records=`` adds ids, users and references),
    or pass ``on_batch(first_index, rows)``, called after every batch (e.g. :meth:`PredictionLog.append`).
    Resuming (``done > 0``) re-decodes the batch holding record ``done`` whole (same batch, same padding,
    same seed as uninterrupted) and returns only rows from ``done`` on.
    ``stats``: generated tokens, seconds, tokens/s and the settings.
    """
    from tqdm.auto import tqdm

    model.eval()
    records = list(records)
    first = (done // settings.batch_size) * settings.batch_size
    prompts = [builder.encode_prompt(record) for record in records[first:]]
    rows, generated, seconds = [], 0, 0.0
    bar = tqdm(total=len(records), initial=done, desc="generating", unit="rec", disable=not progress)
    for start in range(first, len(records), settings.batch_size):
        batch = prompts[start - first : start - first + settings.batch_size]
        input_ids, attention_mask = _left_pad([p["input_ids"] for p in batch], tokenizer.pad_token_id)
        reasoner_inputs = None
        if "reasoner_input_ids" in batch[0]:  # a ReasonerContextBuilder's prompts
            ids, mask = _left_pad([p["reasoner_input_ids"] for p in batch], tokenizer.pad_token_id)
            reasoner_inputs = {"reasoner_input_ids": ids, "reasoner_attention_mask": mask}
        begin = time.perf_counter()
        new_tokens = _decode_batch(model, input_ids, attention_mask, settings, tokenizer, reasoner_inputs)
        seconds += time.perf_counter() - begin
        batch_rows = []
        for offset, tokens in enumerate(new_tokens.tolist()):
            if start + offset < done:
                continue  # already written by the interrupted run
            if tokenizer.eos_token_id in tokens:
                tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
            generated += len(tokens)
            batch_rows.append(
                {
                    "prediction": tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                    "prompt_tokens": len(batch[offset]["input_ids"]),
                    "new_tokens": len(tokens),
                }
            )
        if on_batch is not None:
            on_batch(max(start, done), batch_rows)
        rows.extend(batch_rows)
        bar.update(len(batch_rows))
    bar.close()
    stats = {
        "generated_tokens": generated,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(generated / seconds, 3) if seconds else None,
        "settings": asdict(settings),
    }
    if done:
        stats["resumed_at_record"] = done
    return rows, stats


class PredictionLog:
    """``predictions.jsonl`` written as records finish, resumable after a kill (even mid-line).

    :meth:`resume` reads what an earlier run wrote, drops a torn last line, checks that row ``i`` is
    record ``i`` (same index, id, user and request) and returns how many are done; :meth:`append`
    writes rows and flushes + fsyncs them before returning. No row is ever written twice.
    """

    def __init__(self, path: str | os.PathLike, records: Sequence[Any]):
        self.path = Path(path)
        self.records = list(records)
        self.count = 0

    def resume(self) -> int:
        from flythinker.evaluation.io import prediction_row

        if not self.path.exists():
            self.count = 0
            return 0
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # a kill can tear the last line: it is redone
        count = 0
        try:
            lines = complete.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise ValueError(
                f"{self.path}: not UTF-8, so not written by flythinker generate; pass --overwrite "
                "to start again"
            ) from None
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{self.path} line {lineno}: invalid JSON ({exc.msg}); pass --overwrite to start again"
                ) from None
            if count >= len(self.records):
                raise ValueError(
                    f"{self.path} line {lineno}: more predictions than records; it belongs to another "
                    "run (pass --overwrite to start again)"
                )
            expected = prediction_row(count, "", record=self.records[count])
            keys = ("index", "id", "user_id", "request")
            if any(row.get(k) != expected[k] for k in keys):
                raise ValueError(
                    f"{self.path} line {lineno}: the row is not record {count} of the data (index, id, "
                    "user or request differ): the data changed since the interrupted run; pass "
                    "--overwrite to start again"
                )
            count += 1
        if len(complete) != len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(len(complete))
        self.count = count
        return count

    def append(self, first_index: int, rows: list[dict[str, Any]]) -> None:
        from flythinker.evaluation.io import prediction_row

        if first_index != self.count:
            raise RuntimeError(f"predictions out of order: got record {first_index}, expected {self.count}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            for offset, extra in enumerate(rows):
                index = first_index + offset
                extra = dict(extra)
                prediction = extra.pop("prediction")
                row = prediction_row(index, prediction, record=self.records[index], extra=extra)
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.count += len(rows)
