"""Local next-token judge: expected-value scoring, digit spellings, batching, PereGRM criteria."""

from __future__ import annotations

import pytest
import torch

from flythinker.rewards.judge import LocalJudge, digit_token_ids, expected_digit_score
from flythinker.rewards.prompts import dimension_messages
from flythinker.rewards.samples import EmpathySample

SAMPLES = [
    EmpathySample(
        query="I failed my exam",
        persona="student",
        scenario="exam week",
        analysis="worried because exam failed",
        response="You are not alone, that sounds really hard.",
    ),
    EmpathySample(query="My dog left", analysis="", response="Whatever, get over it."),
    EmpathySample(query="I feel lonely", analysis="lonely since friend moved away", response=""),
]


def test_expected_digit_score_hand_computed():
    logits = torch.full((2, 10), -1e9)
    logits[0, [3, 4]] = 0.0  # digit 1 → token 3, digit 2 → token 4: p = (½, ½)
    logits[1, [5, 8]] = torch.log(torch.tensor([1.0, 3.0]))  # digit 3 → 5, digit 5 → {7, 8}: p = (¼, ¾)
    logits[1, 0] = 5.0  # a non-digit token: ignored by renormalisation
    ids = [[3], [4], [5], [6], [7, 8]]
    got = expected_digit_score(logits, ids)
    torch.testing.assert_close(got, torch.tensor([1.5, 0.25 * 3 + 0.75 * 5], dtype=torch.float64))


def test_digit_ids_cover_spaced_and_plain_spellings():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "Score: 1",
        "Score: 2",
        "Score: 3",
        "Score: 4",
        "Score: 5",
        "1 2 3 4 5",
        "12345 x1 x2 x3 x4 x5",
    ] * 20
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    ids = digit_token_ids(fast)
    for d, variants in zip(range(1, 6), ids):
        assert fast.convert_tokens_to_ids(str(d)) in variants
        assert fast.convert_tokens_to_ids(f"Ġ{d}") in variants
        assert len(variants) == 2


def test_digit_ids_missing_digit_is_a_clear_error(word_tokenizer):
    class NoFive:
        unk_token_id = word_tokenizer.unk_token_id

        def get_vocab(self):
            return {k: v for k, v in word_tokenizer.get_vocab().items() if k != "5"}

        def encode(self, text, add_special_tokens=False):
            return (
                [self.unk_token_id] if "5" in text else word_tokenizer.encode(text, add_special_tokens=False)
            )

    with pytest.raises(ValueError, match=r"digit\(s\) \[5\]"):
        digit_token_ids(NoFive())


def test_scores_valid_deterministic_and_batch_invariant(word_tokenizer, tiny_lm):
    judge = LocalJudge(tiny_lm, word_tokenizer, batch_size=4)
    a = judge.score(SAMPLES)
    b = LocalJudge(tiny_lm, word_tokenizer, batch_size=1).score(SAMPLES)
    for d in ("resonation", "expression", "reception"):
        assert all(1.0 <= v <= 5.0 for v in a[d]), a[d]
        torch.testing.assert_close(torch.tensor(a[d]), torch.tensor(b[d]), rtol=0, atol=1e-5)
    assert a == judge.score(SAMPLES)  # deterministic
    assert all(0.0 <= v <= 100.0 for v in a["bystander"])
    items = [k for k in a if k.startswith("bystander/")]
    assert len(items) == 5 and all(0.0 <= v <= 20.0 for k in items for v in a[k])
    total = [sum(a[k][i] for k in items) for i in range(len(SAMPLES))]
    assert a["bystander"] == pytest.approx(total)
    assert len({round(v, 6) for v in a["expression"]}) > 1  # not a constant


def test_score_equals_unpadded_single_forward(word_tokenizer, tiny_lm):
    """Independent reference: the prompt alone, no padding, full-vocabulary softmax by hand."""
    judge = LocalJudge(tiny_lm, word_tokenizer, batch_size=3)
    got = judge.score(SAMPLES, dimensions=["reception"])["reception"]
    for sample, value in zip(SAMPLES, got):
        text = (
            word_tokenizer.apply_chat_template(
                dimension_messages("reception", sample), tokenize=False, add_generation_prompt=True
            )
            + "Score:"
        )
        ids = torch.tensor([word_tokenizer.encode(text, add_special_tokens=False)])
        with torch.no_grad():
            probs = torch.softmax(tiny_lm(ids).logits[0, -1].double(), -1)
        p = torch.stack([probs[word_tokenizer.convert_tokens_to_ids(str(k))] for k in range(1, 6)])
        want = float((p / p.sum() * torch.arange(1, 6, dtype=torch.float64)).sum())
        assert value == pytest.approx(want, abs=1e-5)


def test_peregrm_criteria_generated_cached_and_used(word_tokenizer, tiny_lm):
    judge = LocalJudge(tiny_lm, word_tokenizer, batch_size=2, criteria_max_new_tokens=6)
    s = EmpathySample(query="I feel sad", memories=["has a dog", "moved away"], response="I am here for you")
    given = EmpathySample(
        query="I feel sad", memories=["x"], criteria="- be warm", response="I am here for you"
    )
    (crit,) = judge.generate_criteria([s])
    assert crit.startswith("- ") and len(crit) > 2
    assert judge.generate_criteria([s]) == [crit] and len(judge._criteria_cache) == 1  # cached
    out = judge.score([s, given], dimensions=["expression"])
    assert all(1.0 <= v <= 5.0 for v in out["expression"])
    assert len(judge._criteria_cache) == 1  # given criteria are not regenerated
    with_criteria = EmpathySample(**{**s.__dict__, "criteria": crit})
    assert "Personalized criteria" in dimension_messages("expression", with_criteria)[1]["content"]
    assert judge.score([with_criteria], ["expression"]) == {"expression": [out["expression"][0]]}
