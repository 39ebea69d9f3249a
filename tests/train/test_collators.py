"""Collators: dynamic padding (both sides) and packing, checked against unpadded examples and
against a tiny random Llama model (packed forward ≡ one forward per sequence)."""

from __future__ import annotations

import random

import pytest
import torch

from flythinker.train.collators import IGNORE_INDEX, PackingCollator, PaddingCollator, pack_indices


def _features(lengths, seed=0, vocab=50):
    rng = random.Random(seed)
    feats = []
    for n in lengths:
        ids = [rng.randrange(3, vocab) for _ in range(n)]
        p = rng.randrange(1, n) if n > 1 else 0
        feats.append(
            {
                "input_ids": ids,
                "labels": [IGNORE_INDEX] * p + ids[p:],
                "prompt_length": p,
                "num_profile_items": 3,
            }
        )
    return feats


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_collator(side):
    feats = _features([5, 9, 1, 7])
    batch = PaddingCollator(0, padding_side=side, pad_to_multiple_of=4)(feats)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == (4, 12) and batch["input_ids"].dtype == torch.long
    for row, f in enumerate(feats):
        n = len(f["input_ids"])
        real = slice(12 - n, 12) if side == "left" else slice(0, n)
        pad = torch.ones(12, dtype=torch.bool)
        pad[real] = False
        assert batch["input_ids"][row, real].tolist() == f["input_ids"]
        assert batch["labels"][row, real].tolist() == f["labels"]
        assert (
            batch["attention_mask"][row, real].eq(1).all() and batch["attention_mask"][row, pad].eq(0).all()
        )
        assert batch["input_ids"][row, pad].eq(0).all() and batch["labels"][row, pad].eq(IGNORE_INDEX).all()


def test_padding_collator_generation_batch_and_errors():
    batch = PaddingCollator(7, padding_side="left")([{"input_ids": [1, 2, 3]}, {"input_ids": [4]}])
    assert "labels" not in batch
    assert batch["input_ids"].tolist() == [[1, 2, 3], [7, 7, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="padding_side"):
        PaddingCollator(0, padding_side="middle")
    with pytest.raises(ValueError, match="pad_token_id is None"):
        PaddingCollator(None)
    with pytest.raises(ValueError, match="differ in length"):
        PaddingCollator(0)([{"input_ids": [1, 2], "labels": [1]}])


def test_pack_indices_first_fit():
    assert pack_indices([5, 9, 3, 7, 2], 12) == [[0, 2, 4], [1], [3]]
    with pytest.raises(ValueError, match="example 1 has 13 tokens > max_length=12"):
        pack_indices([5, 13], 12)


def test_packing_matches_unpacked_examples():
    from transformers.masking_utils import find_packed_sequence_indices

    feats = _features([5, 9, 3, 7, 1, 12, 4], seed=1)
    collator = PackingCollator(16, pad_token_id=0)
    batch, slices = collator.pack(feats)
    assert "attention_mask" not in batch and batch["use_cache"] is False
    assert batch["input_ids"].shape[1] <= 16
    seen = sorted(i for row in slices for i, _, _ in row)
    assert seen == list(range(len(feats)))
    seq_ids = find_packed_sequence_indices(batch["position_ids"])
    for r, row in enumerate(slices):
        for k, (i, s, e) in enumerate(row):
            f = feats[i]
            assert batch["input_ids"][r, s:e].tolist() == f["input_ids"]
            assert batch["position_ids"][r, s:e].tolist() == list(range(e - s))
            assert batch["labels"][r, s].item() == IGNORE_INDEX  # no prediction across the boundary
            assert batch["labels"][r, s + 1 : e].tolist() == f["labels"][1:]
            # transformers sees exactly this block as one sequence
            assert seq_ids[r, s:e].unique().tolist() == [k]
        end = row[-1][2]
        assert batch["labels"][r, end:].eq(IGNORE_INDEX).all()
        if end < batch["input_ids"].shape[1]:  # the padding tail is a block of its own
            assert seq_ids[r, end:].unique().tolist() == [len(row)]


def _tiny_llama(impl):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    cfg._attn_implementation = impl
    return LlamaForCausalLM(cfg).eval()


def _per_sequence_loss(logits, labels):
    """Sum of next-token CE over label positions (shifted) and the count, float64."""
    logp = torch.log_softmax(logits[:-1].double(), dim=-1)
    tgt = labels[1:]
    keep = tgt != IGNORE_INDEX
    return -logp[keep].gather(-1, tgt[keep, None]).sum(), int(keep.sum())


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_forward_equals_unpacked(impl):
    model = _tiny_llama(impl)
    feats = _features([5, 9, 3, 7, 1, 12], seed=2)
    packed, slices = PackingCollator(16, pad_token_id=0).pack(feats)
    padded = PaddingCollator(0)(feats)
    with torch.no_grad():
        packed_logits = model(**packed).logits
        padded_logits = model(**padded).logits
        no_flag = {k: v for k, v in packed.items() if k != "use_cache"}
        leaky_logits = model(**no_flag).logits  # the model builds a KV cache: no packed-sequence mask
    worst_leak = 0.0
    for r, row in enumerate(slices):
        for i, s, e in row:
            n = e - s
            with torch.no_grad():
                alone = model(input_ids=torch.tensor([feats[i]["input_ids"]])).logits[0]
            torch.testing.assert_close(packed_logits[r, s:e], alone, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(padded_logits[i, :n], alone, atol=1e-5, rtol=1e-5)
            lp, cp = _per_sequence_loss(packed_logits[r, s:e], packed["labels"][r, s:e])
            lu, cu = _per_sequence_loss(padded_logits[i, :n], padded["labels"][i, :n])
            assert cp == cu
            torch.testing.assert_close(lp, lu, atol=1e-6, rtol=1e-6)
            worst_leak = max(worst_leak, (leaky_logits[r, s:e] - alone).abs().max().item())
    # documents why the collator sets use_cache=False: without it sequences see each other
    assert worst_leak > 1e-3
