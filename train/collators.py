"""Collators: dynamic padding and sequence packing for encoded examples.

Both take a list of features as produced by :class:`~flythinker.train.prompts.PromptBuilder`
(``input_ids``, optional ``labels``; other keys such as ``prompt_length`` are ignored) and return
only what the model's ``forward`` accepts.

**Padding** (:class:`PaddingCollator`): pads to the longest example of the batch (optionally to a
multiple of ``pad_to_multiple_of``). Pads get ``pad_token_id``, label -100 and attention mask 0.
``padding_side="left"`` is required for generation batches (every prompt then ends at the last
column, where decoding continues); ``"right"`` is the training default — with the mask the model
computes ``position_ids = cumsum(mask) − 1`` (docs/design.md §1), so both sides give the same per-example
loss, and right padding keeps the real tokens at positions 0.. without shifting.

**Packing** (:class:`PackingCollator`): several examples share one row, back to back:

* ``position_ids`` restart at 0 at the first token of every example; the padding tail of a row
  is its own block (positions 0, 1, ...) with label -100;
* no ``attention_mask``: transformers ≥ 5 (``masking_utils.find_packed_sequence_indices``) then
  finds the blocks where consecutive position ids do not increase by exactly 1 and builds a
  block-diagonal causal mask (sdpa / eager / flex), or uses varlen kernels (flash-attention);
* the label at each example's first position is -100, so the last token of one example never
  learns to predict the first token of the next (with the causal-LM shift, ``labels[t]`` is
  predicted from position ``t − 1``);
* ``use_cache=False`` is added to the batch: transformers only looks for packed sequences when no
  KV cache is passed, and models whose config has ``use_cache=True`` create one on their own.
  The model's forward must accept ``use_cache`` (every transformers causal LM does).

The FlyThinker model zeroes the reasoner injection wherever ``position_ids == 0`` (docs/design.md §1), so a
packed row gives each example exactly the logits it gets alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

IGNORE_INDEX = -100


def _round_up(n: int, multiple: int | None) -> int:
    if not multiple:
        return n
    return ((n + multiple - 1) // multiple) * multiple


def _labels_of(feature: Mapping[str, Any]) -> list[int] | None:
    labels = feature.get("labels")
    return None if labels is None else list(labels)


class PaddingCollator:
    """Pads a batch to its longest example.

    Args:
        pad_token_id: id written into padded ``input_ids`` columns.
        padding_side: ``"right"`` (training) or ``"left"`` (generation).
        pad_to_multiple_of: round the padded length up to a multiple of this (e.g. 8 for tensor cores).
        label_pad_id: label of padded columns (-100: ignored by the loss).

    Returns a dict of ``torch.long`` tensors: ``input_ids`` (B, T), ``attention_mask`` (B, T) with 0
    on pads, and ``labels`` (B, T) when the features carry labels.
    """

    def __init__(
        self,
        pad_token_id: int,
        *,
        padding_side: str = "right",
        pad_to_multiple_of: int | None = None,
        label_pad_id: int = IGNORE_INDEX,
    ):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if pad_token_id is None:
            raise ValueError("pad_token_id is None: set tokenizer.pad_token (any id works; pads are masked)")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        self.label_pad_id = label_pad_id

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        ids = [list(f["input_ids"]) for f in features]
        labels = [_labels_of(f) for f in features]
        has_labels = any(lab is not None for lab in labels)
        if has_labels and any(lab is None for lab in labels):
            raise ValueError("some features have labels and some do not")
        for i, (x, lab) in enumerate(zip(ids, labels)):
            if not x:
                raise ValueError(f"feature {i} has empty input_ids")
            if lab is not None and len(lab) != len(x):
                raise ValueError(
                    f"feature {i}: labels ({len(lab)}) and input_ids ({len(x)}) differ in length"
                )
        width = _round_up(max(len(x) for x in ids), self.pad_to_multiple_of)
        batch = len(ids)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        out_labels = torch.full((batch, width), self.label_pad_id, dtype=torch.long) if has_labels else None
        for i, x in enumerate(ids):
            n = len(x)
            cols = slice(width - n, width) if self.padding_side == "left" else slice(0, n)
            input_ids[i, cols] = torch.tensor(x, dtype=torch.long)
            attention_mask[i, cols] = 1
            if out_labels is not None:
                out_labels[i, cols] = torch.tensor(labels[i], dtype=torch.long)
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if out_labels is not None:
            out["labels"] = out_labels
        return out


def pack_indices(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Assign examples to rows of at most ``max_length`` tokens, first fit in the given order.

    Returns one list of example indices per row, each in increasing order. Deterministic.

    Raises:
        ValueError: when an example is longer than ``max_length``.
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(lengths):
        if n > max_length:
            raise ValueError(
                f"example {i} has {n} tokens > max_length={max_length}; truncate it first "
                "(PromptBuilder(max_length=...))"
            )
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max_length - n)
    return rows


class PackingCollator:
    """Packs a batch of examples into as few rows of ≤ ``max_length`` tokens as fit (first fit).

    Args:
        max_length: capacity of one packed row.
        pad_token_id: id written into the padding tail of rows shorter than the longest row.
        pad_to_multiple_of: round the row width up to a multiple of this.
        set_use_cache_false: add ``use_cache=False`` to the batch (see the module docstring).

    Returns ``input_ids``, ``labels`` and ``position_ids`` (all (R, W) ``torch.long``), no
    ``attention_mask``, and ``use_cache=False``. ``sequence_slices`` (not a model input) is exposed
    through :meth:`pack` for tests and analysis.
    """

    def __init__(
        self,
        max_length: int,
        pad_token_id: int,
        *,
        pad_to_multiple_of: int | None = None,
        set_use_cache_false: bool = True,
    ):
        if pad_token_id is None:
            raise ValueError(
                "pad_token_id is None: set tokenizer.pad_token (any id works; pads are never labels)"
            )
        self.max_length = int(max_length)
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.set_use_cache_false = set_use_cache_false

    def pack(
        self, features: Sequence[Mapping[str, Any]]
    ) -> tuple[dict[str, torch.Tensor], list[list[tuple[int, int, int]]]]:
        """The packed batch and, per row, ``(example index, start, end)`` of every example in it."""
        if not features:
            raise ValueError("cannot collate an empty batch")
        ids = [list(f["input_ids"]) for f in features]
        labels = [_labels_of(f) or [IGNORE_INDEX] * len(x) for f, x in zip(features, ids)]
        for i, (x, lab) in enumerate(zip(ids, labels)):
            if not x:
                raise ValueError(f"feature {i} has empty input_ids")
            if len(lab) != len(x):
                raise ValueError(
                    f"feature {i}: labels ({len(lab)}) and input_ids ({len(x)}) differ in length"
                )
        rows = pack_indices([len(x) for x in ids], self.max_length)
        width = _round_up(max(sum(len(ids[i]) for i in row) for row in rows), self.pad_to_multiple_of)
        n_rows = len(rows)
        input_ids = torch.full((n_rows, width), self.pad_token_id, dtype=torch.long)
        out_labels = torch.full((n_rows, width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.empty((n_rows, width), dtype=torch.long)
        slices: list[list[tuple[int, int, int]]] = []
        for r, row in enumerate(rows):
            start = 0
            row_slices = []
            for i in row:
                n = len(ids[i])
                input_ids[r, start : start + n] = torch.tensor(ids[i], dtype=torch.long)
                out_labels[r, start : start + n] = torch.tensor(labels[i], dtype=torch.long)
                out_labels[r, start] = IGNORE_INDEX  # never predict across a sequence boundary
                position_ids[r, start : start + n] = torch.arange(n)
                row_slices.append((i, start, start + n))
                start += n
            position_ids[r, start:] = torch.arange(width - start)  # padding tail: its own block
            slices.append(row_slices)
        batch: dict[str, Any] = {"input_ids": input_ids, "labels": out_labels, "position_ids": position_ids}
        if self.set_use_cache_false:
            batch["use_cache"] = False
        return batch, slices

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return self.pack(features)[0]
