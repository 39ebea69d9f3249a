"""The training forward against an independent re-implementation of docs/design.md §1 (float64)."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import left_padded_batch, tiny_flythinker


def plain_flythinker_logits(model, input_ids, attention_mask):
    """docs/design.md §1 written out with plain tensor ops, one position at a time (independent of the library)."""
    generator, reasoner = model.generator, model.reasoner
    positions = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    h = reasoner(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).last_hidden_state
    table = generator.get_input_embeddings().weight
    mean_norm = table.norm(dim=-1).mean()
    lam = model.config.fusion_lambda
    x = table[input_ids].clone()
    d_r = h.shape[-1]
    for b in range(input_ids.shape[0]):
        for i in range(1, input_ids.shape[1]):
            if attention_mask[b, i - 1]:  # a_{i-1} = 0 contributes nothing (pad states may be anything)
                r = h[b, i - 1] * mean_norm / h[b, i - 1].norm()
                x[b, i, :d_r] = x[b, i, :d_r] + lam * r
    return generator(inputs_embeds=x, attention_mask=attention_mask, position_ids=positions).logits


@pytest.mark.parametrize("reasoner_hidden", [32, 16], ids=["dR=dG", "dR<dG"])
def test_training_logits_equal_plain_reimplementation(reasoner_hidden):
    model = tiny_flythinker(reasoner_hidden=reasoner_hidden, generator_hidden=32)
    input_ids, attention_mask, _ = left_padded_batch([9, 5, 1, 9], seed=1)
    with torch.no_grad():
        ours = model(input_ids, attention_mask=attention_mask).logits
        expected = plain_flythinker_logits(model, input_ids, attention_mask)
    real = attention_mask.bool()
    assert torch.isfinite(ours[real]).all()
    assert (ours[real] - expected[real]).abs().max().item() <= 1e-10


def test_injection_changes_logits_one_position_later():
    """λ = 0 gives the bare generator; λ > 0 changes logits from position 1 on but never position 0."""
    model = tiny_flythinker()
    input_ids, attention_mask, _ = left_padded_batch([8], seed=2)
    with torch.no_grad():
        fused = model(input_ids, attention_mask=attention_mask).logits
        bare = model.generator(input_ids=input_ids, attention_mask=attention_mask).logits
        model.config.fusion_lambda = 0.0
        off = model(input_ids, attention_mask=attention_mask).logits
    assert (off - bare).abs().max().item() <= 1e-12
    assert (fused[:, 0] - bare[:, 0]).abs().max().item() <= 1e-12
    assert (fused[:, 1:] - bare[:, 1:]).abs().amax(-1).min().item() > 1e-6


def test_left_padded_batch_equals_unpadded_rows():
    model = tiny_flythinker()
    input_ids, attention_mask, rows = left_padded_batch([7, 3, 11], seed=3)
    with torch.no_grad():
        batch_logits = model(input_ids, attention_mask=attention_mask).logits
        for b, row in enumerate(rows):
            alone = model(row[None]).logits[0]
            padded = batch_logits[b, input_ids.shape[1] - len(row) :]
            assert (alone - padded).abs().max().item() <= 1e-10


def test_packed_rows_equal_separate_rows():
    """Position ids restarting at 0 delimit packed sequences; the injection is zeroed at each start."""
    model = tiny_flythinker()
    _, _, rows = left_padded_batch([5, 6, 4], seed=4)
    packed = torch.cat(rows)[None]
    position_ids = torch.cat([torch.arange(len(r)) for r in rows])[None]
    with torch.no_grad():
        packed_logits = model(packed, position_ids=position_ids).logits[0]
        start = 0
        for row in rows:
            alone = model(row[None]).logits[0]
            assert (packed_logits[start : start + len(row)] - alone).abs().max().item() <= 1e-10
            start += len(row)


def test_loss_is_next_token_cross_entropy_on_label_positions():
    model = tiny_flythinker(use_fused_loss=False)
    input_ids, attention_mask, _ = left_padded_batch([6, 4], seed=5)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :3] = -100
    out = model(input_ids, attention_mask=attention_mask, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    target = labels[:, 1:].reshape(-1)
    keep = target != -100
    expected = torch.nn.functional.cross_entropy(logits[keep].double(), target[keep])
    assert abs(out.loss.item() - expected.item()) <= 1e-6
