"""Generating predictions for personalized records, batch by batch, with explicit decoding settings.

Prompts are the same ones training used (``PromptBuilder.encode_prompt``), left-padded per batch.
Every setting is explicit and written next to the predictions: nothing is inherited silently from
a checkpoint's generation config.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
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


def _decode_batch(model, input_ids, attention_mask, settings: PredictionSettings, tokenizer) -> torch.Tensor:
    """New tokens [B, n] (EOS-padded rows) from the fast engine when the model is a FlyThinker."""
    from flythinker.modeling import FlyThinkerForCausalLM

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
        )
        return out.sequences[:, input_ids.shape[1] :]
    torch.manual_seed(settings.seed)
    sequences = model.generate(input_ids, attention_mask=attention_mask, **settings.generate_kwargs(tokenizer))
    return sequences[:, input_ids.shape[1] :]


@torch.no_grad()
def generate_predictions(model, tokenizer, records, builder, settings: PredictionSettings, progress: bool = True):
    """Generate for every record; returns (rows, stats).

    Each row: ``{"prediction", "prompt_tokens", "new_tokens"}``; write them with
    :func:`flythinker.evaluation.write_predictions_jsonl` (``records=`` adds ids, users and references).
    ``stats``: generated tokens, seconds, tokens/s and the settings.
    """
    from tqdm.auto import tqdm

    model.eval()
    records = list(records)
    prompts = [builder.encode_prompt(record) for record in records]
    rows, generated, seconds = [], 0, 0.0
    bar = tqdm(total=len(records), desc="generating", unit="rec", disable=not progress)
    for start in range(0, len(records), settings.batch_size):
        batch = prompts[start : start + settings.batch_size]
        input_ids, attention_mask = _left_pad([p["input_ids"] for p in batch], tokenizer.pad_token_id)
        begin = time.perf_counter()
        new_tokens = _decode_batch(model, input_ids, attention_mask, settings, tokenizer)
        seconds += time.perf_counter() - begin
        for offset, tokens in enumerate(new_tokens.tolist()):
            if tokenizer.eos_token_id in tokens:
                tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
            generated += len(tokens)
            rows.append(
                {
                    "prediction": tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                    "prompt_tokens": len(batch[offset]["input_ids"]),
                    "new_tokens": len(tokens),
                }
            )
        bar.update(len(batch))
    bar.close()
    stats = {
        "generated_tokens": generated,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(generated / seconds, 3) if seconds else None,
        "settings": asdict(settings),
    }
    return rows, stats
