"""The reference implementation's training recipe, re-created as the baseline of ``bench_train.py``.

The public reference code (``FlyThinker/Train/{dataset,flythinker,train_flythinker}.py``) trains with:

* **rows left-padded to a fixed 2,550 tokens** (1,250 profile + 300 request + 1,000 target), whatever
  the example's real length; ``position_ids = clip(cumsum(mask) - 1, 0)``;
* the **reasoner as a full causal LM** called with ``use_cache=True``: it builds a KV cache and computes
  its ``lm_head`` logits [B, T, V], which are never used (only its post-norm last hidden state is);
* the **injection in eager PyTorch**, unmasked (the state under the last left pad leaks into the first
  real token)::

      m̄     = mean_v ‖E_G[v]‖₂                      (recomputed every forward, detached)
      r     = h[:, :-1] · m̄ / ‖h[:, :-1]‖           (norm detached)
      x̃     = cat(E_G[x_0], E_G[x_1:] + λ·pad(r))   (in-place add into the first d_R channels when d_R < d_G)

* the **generator called with ``use_cache=True``** and full logits, then the **plain loss**: logits
  upcast with ``.float()``, shifted labels, ``F.cross_entropy`` (mean, or sum / ``num_items_in_batch``).

Everything here is a faithful re-creation for measuring cost, not a model to train with: flythinker's
own forward (``FlyThinkerForCausalLM``) fixes the padding leak and avoids the wasted work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

REFERENCE_ROW_LENGTH = 2550
"""The reference's fixed row length: 1,250 profile + 300 request + 1,000 target tokens."""

IGNORE_INDEX = -100


def reference_collate(
    features: Sequence[Mapping[str, Any]], pad_token_id: int, row_length: int = REFERENCE_ROW_LENGTH
) -> dict[str, torch.Tensor]:
    """Left-pad every example to ``row_length`` (pads: id ``pad_token_id``, mask 0, label -100).

    Also returns ``position_ids = clip(cumsum(mask) - 1, 0)`` as the reference's trainer computes them.

    Raises:
        ValueError: when an example is longer than ``row_length`` (the reference truncates its prompt
            and target before padding; encode with ``max_length <= row_length``).
    """
    if not features:
        raise ValueError("cannot collate an empty batch")
    rows = len(features)
    input_ids = torch.full((rows, row_length), int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((rows, row_length), dtype=torch.long)
    labels = torch.full((rows, row_length), IGNORE_INDEX, dtype=torch.long)
    for i, feature in enumerate(features):
        ids, lab = list(feature["input_ids"]), list(feature["labels"])
        if len(ids) > row_length:
            raise ValueError(f"example {i} has {len(ids)} tokens > the reference row length {row_length}")
        if len(lab) != len(ids):
            raise ValueError(f"example {i}: labels ({len(lab)}) and input_ids ({len(ids)}) differ in length")
        n = len(ids)
        input_ids[i, row_length - n :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, row_length - n :] = 1
        labels[i, row_length - n :] = torch.tensor(lab, dtype=torch.long)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "position_ids": position_ids,
    }


def reference_causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None
) -> torch.Tensor:
    """The reference's ``ForCausalLMLoss``: fp32 logits, labels shifted by padding one -100 at the end,
    ``cross_entropy`` with mean reduction (or sum / ``num_items_in_batch``)."""
    logits = logits.float()
    shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].contiguous()
    logits = logits.view(-1, logits.shape[-1])
    shift_labels = shift_labels.view(-1).to(logits.device)
    if num_items_in_batch is None:
        return F.cross_entropy(logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="mean")
    loss = F.cross_entropy(logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / torch.as_tensor(num_items_in_batch, device=loss.device)


class ReferenceRecipe(nn.Module):
    """The reference's ``FlyThinker.forward`` around existing modules (no copies: weights are shared).

    Args:
        generator: the generator causal LM (``model.generator`` of a FlyThinker).
        reasoner_lm: the reasoner as a full causal LM (backbone + ``lm_head``); its backbone may be the
            very module a FlyThinker uses as ``model.reasoner``.
        fusion_lambda: λ (the reference's ``diff_lambda``).
    """

    def __init__(self, generator: nn.Module, reasoner_lm: nn.Module, fusion_lambda: float = 0.5):
        super().__init__()
        self.generator = generator
        self.reasoner_lm = reasoner_lm
        self.fusion_lambda = float(fusion_lambda)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        position_ids: torch.Tensor,
        num_items_in_batch: int | None = None,
    ) -> torch.Tensor:
        embedding = self.generator.get_input_embeddings()
        input_emb = embedding(input_ids)
        input_emb_norms = torch.norm(embedding.weight, p=2, dim=-1).mean().detach()

        # The reasoner as a full causal LM with a KV cache: logits are computed and kept alive until the
        # forward returns (as the reference's ``output_r1`` is), but never used.
        reasoner_out = self.reasoner_lm.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True
        )
        reasoner_logits = self.reasoner_lm.get_output_embeddings()(reasoner_out.last_hidden_state)
        hidden_states = reasoner_out.last_hidden_state[:, :-1, :]

        hidden_norms = torch.norm(hidden_states, p=2, dim=-1).detach()
        hidden_states = hidden_states * input_emb_norms / hidden_norms[:, :, None]
        if input_emb.shape[-1] == hidden_states.shape[-1]:
            insert_emb = input_emb[:, 1:, :] + self.fusion_lambda * hidden_states
        else:
            width = hidden_states.shape[-1]
            input_emb[:, 1:, :width] = input_emb[:, 1:, :width] + self.fusion_lambda * hidden_states
            insert_emb = input_emb[:, 1:, :]
        draft_emb = torch.cat((input_emb[:, :1, :], insert_emb), dim=1)

        generator_out = self.generator(
            inputs_embeds=draft_emb, attention_mask=attention_mask, position_ids=position_ids, use_cache=True
        )
        loss = reference_causal_lm_loss(generator_out.logits, labels, num_items_in_batch)
        del reasoner_logits, reasoner_out, generator_out
        return loss
