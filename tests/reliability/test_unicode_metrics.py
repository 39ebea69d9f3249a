"""Metrics for any script, English exactly as rouge-score scores it, and empty/mismatched files are errors."""

from __future__ import annotations

import json

import pytest
from rouge_score import rouge_scorer

from flythinker.cli import main
from flythinker.evaluation import metrics
from tests.fixtures import PEPS

PEP_ABSTRACTS = PEPS / "user_train.jsonl"  # 40 real English abstracts (tests/fixtures/peps)

ENGLISH_CASES = [  # the English cases of tests/evaluation/test_metrics.py
    ("The quick brown dog jumps on the log.", "The quick brown fox jumps over the lazy dog"),
    ("testing one", "testing one two"),
    ("testing", "testing one two"),
    ("he jumped", "he jumps"),
    (
        "It is a guide to action which ensures that the military always obeys the commands of the party",
        "It is a guide to action that ensures that the military will forever heed Party commands",
    ),
    ("Don't stop: 3.5 GHz, e-mail_address (PEP-8) & rock'n'roll!", "don't STOP 3 5 ghz email address pep 8"),
]


def _english_pairs():
    outputs = [json.loads(line)["output"] for line in PEP_ABSTRACTS.read_text(encoding="utf-8").splitlines()]
    return (
        list(ENGLISH_CASES) + [(a, b) for a, b in zip(outputs, outputs[1:])] + [(a, a) for a in outputs[:5]]
    )


@pytest.mark.parametrize("use_stemmer", [True, False])
def test_english_scores_are_exactly_rouge_scores_default(use_stemmer):
    pairs = _english_pairs()
    types = ["rouge1", "rouge2", "rougeL"]
    default = rouge_scorer.RougeScorer(types, use_stemmer=use_stemmer)
    ours = metrics.rouge_scores(
        [p for p, _ in pairs], [r for _, r in pairs], rouge_types=types, use_stemmer=use_stemmer
    )
    for i, (pred, ref) in enumerate(pairs):
        expected = default.score(ref, pred)
        for t in types:
            assert ours[t][i] == expected[t].fmeasure, (t, pred[:40])  # bit-identical
    assert len(pairs) > 40  # the real English PEP abstracts were compared too


@pytest.mark.parametrize(
    "text",
    [
        "Привет, мир! Это проверка метрик.",
        "这是一个关于个性化生成的测试句子。",
        "これは日本語のテストです。",
        "नमस्ते दुनिया, यह एक परीक्षण है।",
        "مرحبا بالعالم هذا اختبار للمقاييس",
    ],
)
def test_identical_non_latin_text_scores_one(text):
    scores = metrics.rouge_scores([text], [text])
    assert scores["rouge1"][0] == 1.0 and scores["rougeL"][0] == 1.0
    assert metrics.compute_metrics([text], [text], metrics=["bleu"])["bleu"] == pytest.approx(100.0)


def test_chinese_is_segmented_per_character_for_rouge_meteor_and_bleu():
    tokens = metrics.UnicodeRougeTokenizer().tokenize("我喜欢Python编程")
    assert tokens == ["我", "喜", "欢", "python", "编", "程"]
    assert metrics.rouge_scores(["我喜欢猫"], ["我喜欢狗"])["rouge1"][0] == pytest.approx(0.75)
    assert metrics.meteor_tokenize("我喜欢猫。") == ["我", "喜", "欢", "猫", "。"]
    assert metrics.bleu_tokenization(["我喜欢猫"], ["我喜欢狗"]) == "zh"
    assert metrics.bleu_tokenization(["the cat"], ["the dog"]) == "13a"
    assert 0.0 < metrics.corpus_bleu(["我今天很喜欢这只猫"], ["我今天很喜欢这只狗"]) < 100.0
    assert metrics.compute_metrics(["a"], ["a"], metrics=["bleu"])["bleu_tokenize"] == "13a"


def test_russian_partial_overlap_counts_words():
    score = metrics.rouge_scores(["кошка сидит на окне"], ["кошка спит на окне"])["rouge1"][0]
    assert score == pytest.approx(0.75)


def test_empty_predictions_file_is_an_error(tmp_path, capsys):
    path = tmp_path / "predictions.jsonl"
    path.write_text("")
    assert main(["evaluate", "--predictions", str(path)]) == 2
    assert "holds no predictions" in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()


def test_repeated_or_mixed_rows_are_an_error(tmp_path, capsys):
    path = tmp_path / "predictions.jsonl"
    rows = [
        {"index": 0, "prediction": "a", "reference": "a"},
        {"index": 1, "prediction": "b", "reference": "b"},
        {"index": 1, "prediction": "b", "reference": "b"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["evaluate", "--predictions", str(path)]) == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "index 1 where 2 was expected" in err


def test_a_predictions_directory_is_reported_as_a_directory(tmp_path, capsys):
    assert main(["evaluate", "--predictions", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_emoji_only_texts_are_reported_unscorable_not_a_silent_zero(tmp_path, capsys):
    """Issue 23: identical emoji-only texts score ROUGE 0 / BLEU 0; the metrics say why."""
    result = metrics.compute_metrics(["🙂🎉", "a cat"], ["🙂🎉", "a cat"], metrics=("rouge1", "bleu"))
    assert result["unscorable"] == [0]
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(
        json.dumps({"prediction": "🙂🎉🙂", "reference": "🙂🎉🙂"}) + "\n", encoding="utf-8"
    )
    assert main(["evaluate", "--predictions", str(predictions), "--metrics", "rouge1", "bleu"]) == 0
    err = capsys.readouterr().err
    assert "1 of 1 records" in err and "no scorable tokens" in err
    assert json.loads((tmp_path / "metrics.json").read_text())["unscorable"] == [0]
