"""Input validation for the FlyThinker forward: clear errors instead of silent output or a deep IndexError.

Checked (docs/design.md §1 contract of ``forward``):

* ``0 <= input_ids < min(V_G, V_R)`` — both models read the same ids;
* the sequence fits both models' ``max_position_embeddings`` (``past_length + L``, or the width of
  the 2-D attention mask, which covers the past; packed rows without a mask are checked through
  their ``position_ids``);
* at the first step (``past_length == 0``) no batch row is all padding: such a row has no token to
  attend to and its outputs would be NaN or arbitrary.

Cost: the length check is host arithmetic only. The id range and padding checks need one host
synchronisation per call, so they run only on prefill / training calls (``past_length == 0`` or
more than one new token), never on a one-token decode step (whose id the model itself produced),
and they are skipped while ``torch.compile`` traces.
"""

from __future__ import annotations

from typing import Any

import torch


def _limit(config: Any, name: str) -> int | None:
    values = []
    for sub in (config.generator_config, config.reasoner_config):
        value = getattr(sub.get_text_config(), name, None)
        if isinstance(value, int) and value > 0:
            values.append(value)
    return min(values) if values else None


def validate_model_inputs(
    config: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    past_length: int,
    position_ids: torch.Tensor | None = None,
) -> None:
    """Raise ``ValueError`` (what, where, what to do) for inputs the model cannot process correctly."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    batch, length = input_ids.shape
    if length == 0 and past_length == 0:
        raise ValueError(
            "input_ids holds no token (shape [batch, 0]) and there is no cache: give the prompt at least one "
            "token (e.g. the tokenizer's BOS token) to generate from"
        )
    if attention_mask is not None and (attention_mask.dim() != 2 or attention_mask.shape[0] != batch):
        raise ValueError(
            f"attention_mask must be [batch, past + length] = [{batch}, {past_length + length}], "
            f"got shape {tuple(attention_mask.shape)}"
        )
    max_positions = _limit(config, "max_position_embeddings")
    total = (
        past_length + length
        if attention_mask is None
        else max(attention_mask.shape[-1], past_length + length)
    )
    compiling = torch.compiler.is_compiling()
    if max_positions is not None and total > max_positions:
        packed = attention_mask is None and position_ids is not None and past_length == 0
        if not packed:
            raise ValueError(
                f"the sequence has {total} positions (past {past_length} + new {length}) but the model supports at most "
                f"max_position_embeddings={max_positions}: shorten the prompt (e.g. a smaller --max-length) "
                "or max_new_tokens"
            )
        if not compiling and int(position_ids.max()) >= max_positions:
            raise ValueError(
                f"position_ids reach {int(position_ids.max())} but the model supports at most "
                f"max_position_embeddings={max_positions}: pack shorter sequences"
            )
    if compiling or length == 0 or (past_length > 0 and length == 1):
        return
    vocab = _limit(config, "vocab_size")
    stats = [input_ids.min(), input_ids.max()]
    check_rows = attention_mask is not None and past_length == 0
    if check_rows:
        stats.append((attention_mask.sum(-1) == 0).sum())
    low, high, *empty = torch.stack([s.to(torch.long) for s in stats]).tolist()  # one host sync
    if low < 0 or (vocab is not None and high >= vocab):
        raise ValueError(
            f"input_ids hold token id {low if low < 0 else high}, outside [0, {vocab}) (the generator and reasoner "
            f"embedding tables): the tokenizer does not belong to this model, or the ids are corrupt"
        )
    if check_rows and empty[0]:
        rows = (attention_mask.sum(-1) == 0).nonzero().flatten().tolist()
        raise ValueError(
            f"batch rows {rows} are all padding (attention_mask is 0 everywhere): every row needs at least one real "
            "token; drop empty prompts before generating"
        )
