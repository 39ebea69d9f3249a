"""Metric values on the libraries' own documented examples, corpus conventions, and edge cases."""

from __future__ import annotations

import math

import pytest

from flythinker.evaluation import compute_metrics, corpus_bleu, meteor_scores, meteor_tokenize, rouge_scores

GUIDE_HYP = "It is a guide to action which ensures that the military always obeys the commands of the party"
GUIDE_REF = "It is a guide to action that ensures that the military will forever heed Party commands"


def test_meteor_standard_example(wordnet):
    # nltk's doctest (nltk/translate/meteor_score.py): round(..., 4) == 0.6944
    (score,) = meteor_scores([GUIDE_HYP], [GUIDE_REF])
    assert round(score, 4) == 0.6944
    assert round(compute_metrics([GUIDE_HYP], [GUIDE_REF], metrics=["meteor"])["meteor"], 4) == 0.6944


@pytest.mark.parametrize(
    "ref, hyp, expected",
    [
        # nltk/test/meteor.doctest
        ("The candidate has no alignment to any of the references", "John loves Mary", 0.0),
        ("The cat sat on the mat", "on the mat sat the cat", 0.5),
        ("The cat sat on the mat", "The cat was sat on the mat", 0.9654),
        ("create or update a vm set", "creates or updates a virtual machine scale set", 0.7806),
    ],
)
def test_meteor_nltk_doctests(wordnet, ref, hyp, expected):
    assert round(meteor_scores([hyp], [ref])[0], 4) == expected


def test_meteor_uses_wordnet_synonyms(wordnet):
    # "quick" ~ "fast" only through WordNet synsets (no exact or stem match)
    with_syn = meteor_scores(["a fast car"], ["a quick car"])[0]
    without = meteor_scores(["a blue car"], ["a quick car"])[0]
    assert with_syn > without
    assert wordnet.synsets("dog")


def test_meteor_tokenizer_splits_sentences_offline():
    assert meteor_tokenize("I like it. You do too!") == ["I", "like", "it", ".", "You", "do", "too", "!"]
    assert meteor_tokenize("Don't stop.") == ["Do", "n't", "stop", "."]


def test_rouge_against_rouge_score_readme_example():
    # rouge-score README: precision/recall/F for rouge1 (0.75, 0.6667, 0.7059), rougeL (0.625, 0.5556, 0.5882)
    scores = rouge_scores(
        ["The quick brown dog jumps on the log."], ["The quick brown fox jumps over the lazy dog"]
    )
    assert scores["rouge1"][0] == pytest.approx(2 * 0.75 * (6 / 9) / (0.75 + 6 / 9), abs=1e-12)
    assert scores["rouge1"][0] == pytest.approx(0.7058823529, abs=1e-9)
    assert scores["rougeL"][0] == pytest.approx(0.5882352941, abs=1e-9)


def test_rouge_against_rouge_score_unit_tests():
    # rouge_score/rouge_scorer_test.py: target "testing one two", prediction "testing one" → F 4/5
    s = rouge_scores(["testing one"], ["testing one two"])
    assert s["rouge1"][0] == pytest.approx(4 / 5) and s["rougeL"][0] == pytest.approx(4 / 5)
    s = rouge_scores(["testing"], ["testing one two"])
    assert s["rouge1"][0] == pytest.approx(1 / 2)
    # the stemmer matters: jumps/jumped share the stem "jump"
    stem = rouge_scores(["he jumped"], ["he jumps"], use_stemmer=True)["rouge1"][0]
    nostem = rouge_scores(["he jumped"], ["he jumps"], use_stemmer=False)["rouge1"][0]
    assert stem == pytest.approx(1.0) and nostem == pytest.approx(0.5)


def test_bleu_against_sacrebleu_readme_example():
    refs = [
        ["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
        ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."],
    ]
    sys_out = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    per_example_refs = [list(r) for r in zip(*refs)]
    # sacrebleu README: "BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ratio = 0.944 hyp_len = 17 ref_len = 18)"
    assert round(corpus_bleu(sys_out, per_example_refs), 2) == 48.53
    assert compute_metrics(sys_out, per_example_refs, metrics=["bleu"])["bleu"] == pytest.approx(
        corpus_bleu(sys_out, per_example_refs)
    )
    # BLEU is corpus-level (n-gram counts pooled over the corpus), not the mean of sentence scores
    preds = ["the cat sat on the mat by the door today", "a b"]
    refs = ["the cat sat on the mat by the door today", "x y"]
    assert corpus_bleu(preds[:1], refs[:1]) == pytest.approx(100.0)
    assert corpus_bleu(preds[1:], refs[1:]) == pytest.approx(0.0)
    assert abs(corpus_bleu(preds, refs) - 50.0) > 1


def test_corpus_average_and_edge_cases(wordnet):
    preds = [GUIDE_HYP, "The quick brown dog jumps on the log.", ""]
    refs = [GUIDE_REF, "The quick brown fox jumps over the lazy dog", "Something to say."]
    res = compute_metrics(preds, refs, per_example=True)
    assert res["n"] == 3
    for m in ("rouge1", "rougeL", "meteor"):
        singles = [compute_metrics([p], [r], metrics=[m])[m] for p, r in zip(preds, refs)]
        assert res[m] == pytest.approx(sum(singles) / 3)
        assert res["per_example"][m] == pytest.approx(singles)
        assert res["per_example"][m][2] == 0.0  # empty prediction
    assert 0 <= res["bleu"] <= 100
    assert math.isnan(compute_metrics([], [], metrics=["rouge1"])["rouge1"])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        compute_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="unknown metrics"):
        compute_metrics(["a"], ["a"], metrics=["bertscore"])


def test_missing_wordnet_gives_setup_hint(monkeypatch, tmp_path):
    import nltk

    from flythinker.evaluation import wordnet_setup

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(wordnet_setup.WordNetNotFoundError, match="setup_wordnet.sh"):
        meteor_scores(["a"], ["a"])
    (tmp_path / "corpora" / "wordnet").mkdir(parents=True)  # Debian files copied without lexnames
    with pytest.raises(wordnet_setup.WordNetNotFoundError, match="incomplete .*lexnames"):
        wordnet_setup.get_wordnet()
