"""Text-overlap metrics for personalized long-form generation, computed offline.

LongLaMP (Kumar et al., 2024) reports ROUGE-1, ROUGE-L and METEOR (and the think-while-generating
paper adds BLEU) through the 🤗 ``evaluate`` wrappers. flythinker computes the same quantities from
the underlying libraries directly:

* **ROUGE-1 / ROUGE-L**: ``rouge_score.rouge_scorer.RougeScorer`` F-measure per example
  (rouge-score's tokenizer: lower-case, non-alphanumerics → spaces; ``use_stemmer=True``, the
  Porter stemmer, by default — pass ``use_stemmer=False`` to match ``evaluate``'s own default),
  averaged over examples. Deviation: ``evaluate`` reports the *median of bootstrap resamples*
  of the mean (``BootstrapAggregator(...).mid``), which is random and approximates the plain mean
  reported here. With several references per example the best-matching one counts
  (``score_multi``).
* **METEOR**: ``nltk.translate.meteor_score.meteor_score`` per example with NLTK's defaults
  (α=0.9, β=3, γ=0.5, lower-casing, Porter stemmer, WordNet synonyms), averaged over examples —
  as ``evaluate``'s ``meteor``. Tokenization: ``evaluate`` uses ``nltk.word_tokenize``, which
  needs the punkt sentence splitter (not available offline); here the text is split into
  sentences at ``[.!?]`` followed by white space and each sentence goes through
  ``word_tokenize(..., preserve_line=True)`` (Treebank tokenizer), which separates sentence-final
  periods as punkt would, except after abbreviations ("e.g." → "e.g", "."). Needs WordNet
  (:mod:`flythinker.evaluation.wordnet_setup`).
* **BLEU**: ``sacrebleu.corpus_bleu`` (corpus-level, 13a tokenization, exponential smoothing
  off, 0–100 scale), as ``evaluate``'s ``sacrebleu``.

Scales: ROUGE and METEOR in [0, 1], BLEU in [0, 100] (sacrebleu's scale). An empty prediction
scores 0 on every metric.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

References = Sequence[str | Sequence[str]]

DEFAULT_METRICS: tuple[str, ...] = ("rouge1", "rougeL", "meteor", "bleu")
ROUGE_TYPES: tuple[str, ...] = ("rouge1", "rouge2", "rougeL", "rougeLsum")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _ref_lists(predictions: Sequence[str], references: References) -> list[list[str]]:
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references")
    out = []
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        if not isinstance(pred, str):
            raise TypeError(f"prediction {i} must be a string, got {type(pred).__name__}")
        refs = [ref] if isinstance(ref, str) else list(ref)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise TypeError(f"reference {i} must be a string or a non-empty list of strings")
        out.append(refs)
    return out


def rouge_scores(predictions: Sequence[str], references: References, *,
                 rouge_types: Sequence[str] = ("rouge1", "rougeL"), use_stemmer: bool = True) -> dict[str, list[float]]:
    """Per-example ROUGE F-measures: ``{rouge_type: [f_1, ..., f_n]}``."""
    from rouge_score import rouge_scorer

    unknown = set(rouge_types) - set(ROUGE_TYPES)
    if unknown:
        raise ValueError(f"unknown ROUGE types {sorted(unknown)}; expected some of {ROUGE_TYPES}")
    refs = _ref_lists(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)
    out: dict[str, list[float]] = {t: [] for t in rouge_types}
    for pred, rs in zip(predictions, refs):
        scores = scorer.score(rs[0], pred) if len(rs) == 1 else scorer.score_multi(rs, pred)
        for t in rouge_types:
            out[t].append(float(scores[t].fmeasure))
    return out


def meteor_tokenize(text: str) -> list[str]:
    """Words for METEOR: regex sentence split, then ``word_tokenize(s, preserve_line=True)``."""
    from nltk.tokenize import word_tokenize

    words: list[str] = []
    for sentence in _SENTENCE_END.split(text.strip()):
        if sentence:
            words.extend(word_tokenize(sentence, preserve_line=True))
    return words


def meteor_scores(predictions: Sequence[str], references: References, *, alpha: float = 0.9, beta: float = 3.0,
                  gamma: float = 0.5) -> list[float]:
    """Per-example METEOR (NLTK, WordNet synonyms). Raises ``WordNetNotFoundError`` with the fix."""
    from nltk.translate.meteor_score import meteor_score

    from flythinker.evaluation.wordnet_setup import get_wordnet

    refs = _ref_lists(predictions, references)
    wordnet = get_wordnet()
    out = []
    for pred, rs in zip(predictions, refs):
        hyp = meteor_tokenize(pred)
        ref_tokens = [meteor_tokenize(r) for r in rs]
        if not hyp or not any(ref_tokens):
            out.append(0.0)
            continue
        out.append(float(meteor_score(ref_tokens, hyp, wordnet=wordnet, alpha=alpha, beta=beta, gamma=gamma)))
    return out


def corpus_bleu(predictions: Sequence[str], references: References) -> float:
    """sacrebleu corpus BLEU (0–100). Examples may have different numbers of references."""
    import sacrebleu

    refs = _ref_lists(predictions, references)
    n_streams = max((len(r) for r in refs), default=1)
    # sacrebleu wants one stream per reference position; missing references are None
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(n_streams)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams).score)


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def compute_metrics(predictions: Sequence[str], references: References, *,
                    metrics: Sequence[str] = DEFAULT_METRICS, use_stemmer: bool = True,
                    per_example: bool = False) -> dict[str, Any]:
    """Corpus-level metrics as LongLaMP reports them (see the module docstring).

    Args:
        predictions: generated texts.
        references: one reference string (or a list of them) per prediction.
        metrics: any of ``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum``, ``meteor``, ``bleu``.
        use_stemmer: Porter stemming inside ROUGE.
        per_example: also return ``{"per_example": {metric: [score per example]}}`` (not BLEU,
            which is corpus-level only).

    Returns:
        ``{"n": number of examples, <metric>: mean score, ...}``.
    """
    known = set(ROUGE_TYPES) | {"meteor", "bleu"}
    unknown = set(metrics) - known
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; expected some of {sorted(known)}")
    _ref_lists(predictions, references)
    result: dict[str, Any] = {"n": len(predictions)}
    per: dict[str, list[float]] = {}
    rouge_types = [m for m in metrics if m in ROUGE_TYPES]
    if rouge_types:
        per.update(rouge_scores(predictions, references, rouge_types=rouge_types, use_stemmer=use_stemmer))
    if "meteor" in metrics:
        per["meteor"] = meteor_scores(predictions, references)
    for m in metrics:
        if m == "bleu":
            result["bleu"] = corpus_bleu(predictions, references) if predictions else float("nan")
        else:
            result[m] = _mean(per[m])
    if per_example:
        result["per_example"] = per
    return result
