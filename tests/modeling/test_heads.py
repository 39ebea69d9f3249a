"""Reward heads: pooling, outputs, init, save/load with the model, Bradley–Terry on a separable set."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, LlamaConfig, LlamaForCausalLM

from flythinker.modeling.heads import (
    EmpathyRewardModel,
    RewardHead,
    build_reward_heads,
    init_reward_head_weights,
    pool_last_token,
    pool_span,
)
from flythinker.rewards.encoding import encode_samples
from flythinker.rewards.formula import perm_reward
from flythinker.rewards.samples import EmpathySample
from flythinker.train.reward_training import (
    RewardCollator,
    bradley_terry_loss,
    fit_reward_heads,
    pairwise_accuracy,
    regression_loss,
)

SPEC = {"perm": {"kind": "perm"}, "peregrm": {"kind": "peregrm", "dropout": 0.1, "combine": "geometric"}}


def _backbone(vocab=64, hidden=32, seed=0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=0,
        )
    )


def test_pool_last_token_left_and_right_padding():
    h = torch.randn(3, 6, 5, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    want = torch.stack([h[0, 2], h[1, 5], h[2, 5]])
    torch.testing.assert_close(pool_last_token(h, mask), want, rtol=0, atol=0)
    torch.testing.assert_close(pool_last_token(h, None), h[:, -1], rtol=0, atol=0)


def test_pool_span_mean_and_empty():
    h = torch.randn(2, 5, 4, dtype=torch.float64)
    span = torch.tensor([[0, 1, 1, 0, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    got = pool_span(h, span)
    torch.testing.assert_close(got[0], (h[0, 1] + h[0, 2] + h[0, 4]) / 3, rtol=0, atol=1e-12)
    assert torch.equal(got[1], torch.zeros(4, dtype=torch.float64))


def test_head_outputs_ranges_fp32_and_formula():
    torch.manual_seed(0)
    head = RewardHead(8, combine="harmonic").eval()
    init_reward_head_weights(head, std=1.0)
    h = (3 * torch.randn(4, 7, 8)).to(torch.bfloat16)
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[0, :3] = 0
    ana = torch.zeros(4, 7, dtype=torch.bool)
    ana[1, 2:5] = True
    with torch.no_grad():
        out = head(h, mask, ana, num_tokens=torch.tensor([10, 768, 769, 900]))
    for d in ("resonation", "expression", "reception"):
        assert out[d].dtype == torch.float32 and ((out[d] > 1) & (out[d] < 5)).all()
    assert ((out["bystander"] > 0) & (out["bystander"] < 100)).all()
    # Independent recomputation: float64 pooling + linear + the float formula.
    hf, w, b = h.double(), head.score.weight.double(), head.score.bias.double()
    last = torch.stack([hf[0, 6], hf[1, 6], hf[2, 6], hf[3, 6]])
    z = last @ w.T + b
    z_res = z[:, 0].clone()
    z_res[1] = hf[1, 2:5].mean(0) @ w[0] + b[0]
    z_res[[0, 2, 3]] = b[0]  # empty analysis spans use the (zero-initialised) empty_analysis vector
    sig = torch.sigmoid
    for i, n in enumerate([10, 768, 769, 900]):
        s = (1 + 4 * sig(z_res[i]), 1 + 4 * sig(z[i, 1]), 1 + 4 * sig(z[i, 2]), 100 * sig(z[i, 3]))
        assert float(out["resonation"][i]) == pytest.approx(float(s[0]), abs=1e-5)
        assert float(out["reward"][i]) == pytest.approx(perm_reward(*(float(x) for x in s), n), abs=1e-5)


def test_build_reward_heads_validation_and_init_covers_every_parameter():
    heads = build_reward_heads(SPEC, 16)
    assert set(heads) == {"perm", "peregrm"} and heads["peregrm"].combine == "geometric"
    for p in heads.parameters():
        p.data.fill_(float("nan"))
    init_reward_head_weights(heads, std=0.02)
    assert all(torch.isfinite(p).all() for p in heads.parameters())
    assert torch.equal(heads["perm"].score.bias, torch.zeros(4))
    with pytest.raises(ValueError, match="kind"):
        build_reward_heads({"x": {"kind": "ppo"}}, 16)
    with pytest.raises(ValueError, match="unknown keys"):
        build_reward_heads({"x": {"kind": "perm", "temperature": 1}}, 16)
    with pytest.raises(ValueError, match="'kind' key"):
        build_reward_heads({"x": {}}, 16)


def test_reward_model_save_load_identical_scores(tmp_path):
    model = EmpathyRewardModel.from_backbone(_backbone(), SPEC).eval()
    for p in model.reward_heads.parameters():  # non-trivial head weights, so a re-init would show
        torch.nn.init.normal_(p, std=0.5)
    ids = torch.randint(1, 64, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    ana = torch.zeros_like(ids, dtype=torch.bool)
    ana[1, 3:6] = True
    before = model.score_rewards(ids, mask, ana)
    model.save_pretrained(tmp_path)
    for loaded in (EmpathyRewardModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert isinstance(loaded, EmpathyRewardModel) and loaded.config.reward_heads == SPEC
        after = loaded.eval().score_rewards(ids, mask, ana)
        for name in SPEC:
            for k in ("resonation", "expression", "reception", "bystander", "reward"):
                assert torch.equal(before[name][k], after[name][k]), (name, k)


def test_reward_model_padding_side_invariant(word_tokenizer):
    model = EmpathyRewardModel.from_backbone(_backbone(vocab=len(word_tokenizer)), {"perm": {"kind": "perm"}})
    model.eval()
    samples = [
        EmpathySample(query="I feel sad", analysis="sad because job", response="I am here for you"),
        EmpathySample(query="my dog left", analysis="", response="that sounds really hard you are not alone"),
    ]
    right = encode_samples(word_tokenizer, samples, padding_side="right")
    left = encode_samples(word_tokenizer, samples, padding_side="left")
    a, b = model.score_rewards(**right)["perm"], model.score_rewards(**left)["perm"]
    torch.testing.assert_close(a["reward"], b["reward"], rtol=0, atol=1e-5)
    # The analysis mask covers exactly the analysis words of row 0 and nothing of row 1 (empty analysis).
    row = right["input_ids"][0][right["analysis_mask"][0]]
    assert word_tokenizer.decode(row) == "sad because job"
    assert not right["analysis_mask"][1].any()


def test_flythinker_heads_round_trip(tmp_path):
    from flythinker import FlyThinkerForCausalLM
    from tests.tiny_models import tiny_flythinker

    model = tiny_flythinker(dtype=torch.float32, reward_heads=SPEC)
    assert set(model.reward_heads) == set(SPEC)
    for p in model.reward_heads.parameters():
        torch.nn.init.normal_(p, std=0.5)
    model.save_pretrained(tmp_path)
    loaded = FlyThinkerForCausalLM.from_pretrained(tmp_path)
    sd, sd2 = model.reward_heads.state_dict(), loaded.reward_heads.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    ids = torch.randint(3, 96, (2, 7))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    a, b = model.eval().score_rewards(ids, mask), loaded.eval().score_rewards(ids, mask)
    for name in SPEC:
        assert (a[name]["reward"] - b[name]["reward"]).abs().max().item() <= 1e-6


def test_losses_hand_computed():
    pred = {"resonation": torch.tensor([3.0, 5.0]), "bystander": torch.tensor([50.0, 0.0])}
    target = {"resonation": torch.tensor([1.0, float("nan")]), "bystander": torch.tensor([100.0, 0.0])}
    loss, parts = regression_loss(pred, target)
    assert parts["resonation"] == pytest.approx(0.25)  # ((3−1)/4)², NaN row ignored
    assert parts["bystander"] == pytest.approx(0.125)  # mean(((50−100)/100)², 0)
    assert float(loss) == pytest.approx(0.375)
    bt = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert float(bt) == pytest.approx(
        (torch.log1p(torch.exp(torch.tensor(-2.0))) + torch.log(torch.tensor(2.0))) / 2
    )


def _separable_pairs(n, seed, length=10, vocab=64):
    """Chosen rows use tokens from the upper half of the vocabulary, rejected rows the lower half."""
    g = torch.Generator().manual_seed(seed)
    good = torch.randint(vocab // 2, vocab, (n, length), generator=g)
    bad = torch.randint(1, vocab // 2, (n, length), generator=g)
    ones = torch.ones(n, length, dtype=torch.long)
    return {
        "chosen_input_ids": good,
        "chosen_attention_mask": ones,
        "rejected_input_ids": bad,
        "rejected_attention_mask": ones,
    }


def test_bradley_terry_reaches_ranking_accuracy_on_held_out_pairs():
    model = EmpathyRewardModel.from_backbone(_backbone(seed=1), {"perm": {"kind": "perm"}})
    train = [_separable_pairs(16, seed) for seed in range(8)]
    held_out = [_separable_pairs(64, 1000)]
    before = pairwise_accuracy(model, held_out)
    losses = fit_reward_heads(model, train, objective="bradley_terry", epochs=3, lr=3e-3, progress=False)
    after = pairwise_accuracy(model, held_out)
    assert after >= 0.9, (before, after, losses[-5:])
    assert sum(losses[-8:]) < sum(losses[:8])


def test_regression_collator_and_fit(word_tokenizer):
    model = EmpathyRewardModel.from_backbone(_backbone(vocab=len(word_tokenizer)), {"perm": {"kind": "perm"}})
    collate = RewardCollator(word_tokenizer, max_length=64)
    good = EmpathySample(query="I failed my exam", analysis="worried", response="You are not alone")
    bad = EmpathySample(query="I failed my exam", analysis="", response="stop complaining")
    batch = collate(
        [
            {"sample": good, "targets": {"reception": 5.0, "bystander": 90.0}},
            {"sample": bad, "targets": {"reception": 1.0, "bystander": 10.0}},
        ]
    )
    losses = fit_reward_heads(model, [batch], objective="regression", epochs=60, lr=3e-3, progress=False)
    assert losses[-1] < 0.1 * losses[0]
    out = model.eval().score_rewards(batch["input_ids"], batch["attention_mask"], batch["analysis_mask"])[
        "perm"
    ]
    assert float(out["reception"][0]) > 4 and float(out["reception"][1]) < 2
