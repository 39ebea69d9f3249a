"""Text-overlap metrics for personalized long-form generation, computed offline.

LongLaMP (Kumar et al., 2024) reports ROUGE-1, ROUGE-L and METEOR (and the think-while-generating
paper adds BLEU) through the 🤗 ``evaluate`` wrappers. flythinker computes the same quantities from
the underlying libraries directly:

* **ROUGE-1 / ROUGE-L**: ``rouge_score.rouge_scorer.RougeScorer`` F-measure per example with
  :class:`UnicodeRougeTokenizer`: lower-case; ``a-z``, ``0-9`` and the letters, digits and
  combining marks of every non-Latin script (Cyrillic, Greek, Arabic, Devanagari, Hangul, ...)
  form words, everything else → space; each CJK ideograph / kana is a token of its own (Chinese
  and Japanese are written without spaces); the Porter stemmer (``use_stemmer=True`` by default —
  pass ``use_stemmer=False`` to match ``evaluate``'s own default) on ASCII words longer than 3
  characters. Latin-script text, accented letters included, is tokenized exactly as by
  rouge-score's default tokenizer (the LongLaMP convention: English scores are unchanged, and
  "café" is "caf"), whose ``[a-z0-9]`` filter alone would score identical Russian or Chinese
  texts 0. Scripts written without spaces other than CJK (Thai, Lao, Khmer, ...) are split at
  spaces only. Averaged over examples. Deviation: ``evaluate`` reports the *median of bootstrap resamples*
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
  Text holding CJK characters is split into one word per CJK character first (otherwise a whole
  Chinese sentence is one "word"); other text is unchanged.
* **BLEU**: ``sacrebleu.corpus_bleu`` (corpus-level, exponential smoothing off, 0–100 scale), as
  ``evaluate``'s ``sacrebleu``, with the 13a tokenization — or sacrebleu's ``zh`` tokenization
  (one token per Chinese character) when any prediction or reference holds CJK characters; the
  tokenization used is returned as ``bleu_tokenize``.

Scales: ROUGE and METEOR in [0, 1], BLEU in [0, 100] (sacrebleu's scale). An empty prediction
scores 0 on every metric.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

References = Sequence[str | Sequence[str]]

DEFAULT_METRICS: tuple[str, ...] = ("rouge1", "rougeL", "meteor", "bleu")
ROUGE_TYPES: tuple[str, ...] = ("rouge1", "rouge2", "rougeL", "rougeLsum")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ASCII_WORD = re.compile(r"^[a-z0-9]+$")
# Scripts written without spaces whose characters are words or morphemes: Han (with extensions and
# compatibility ideographs), Hiragana, Katakana (and its phonetic extensions), Bopomofo.
_CJK_RANGES = (
    (0x3040, 0x30FF),
    (0x3100, 0x312F),
    (0x31A0, 0x31BF),
    (0x31F0, 0x31FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0xFF66, 0xFF9F),
    (0x20000, 0x2FA1F),
    (0x30000, 0x323AF),
)


def is_cjk(char: str) -> bool:
    """Han ideograph, kana or bopomofo (one token each for ROUGE and METEOR)."""
    code = ord(char)
    return any(low <= code <= high for low, high in _CJK_RANGES)


# Latin-script and symbol blocks that rouge-score's default tokenizer turns into spaces; kept so, so that
# English (and any Latin-script) text scores exactly as with rouge-score: Latin-1 Supplement to
# Combining Diacritical Marks, Latin Extended Additional, super/subscripts, letterlike symbols, number
# forms, enclosed alphanumerics, Latin Extended-C/D/E, Latin ligatures.
_LATIN_BLOCKS = (
    (0x0080, 0x036F),
    (0x1D00, 0x1DFF),
    (0x1E00, 0x1EFF),
    (0x2070, 0x209F),
    (0x2100, 0x218F),
    (0x2460, 0x24FF),
    (0x2C60, 0x2C7F),
    (0xA720, 0xA7FF),
    (0xAB30, 0xAB6F),
    (0xFB00, 0xFB06),
)


@lru_cache(maxsize=1 << 16)
def _char_kind(char: str) -> int:
    """0: separator; 1: part of a word; 2: a CJK token of its own."""
    code = ord(char)
    if code < 0x80:
        return 1 if ("a" <= char <= "z" or "0" <= char <= "9") else 0  # rouge-score's [a-z0-9] (lower-cased)
    if is_cjk(char):
        return 2
    if any(low <= code <= high for low, high in _LATIN_BLOCKS):
        return 0
    return 1 if unicodedata.category(char)[0] in "LNM" else 0


def unicode_words(text: str) -> list[str]:
    """Lower-cased words of any script; each CJK character is a word of its own."""
    words: list[str] = []
    current: list[str] = []
    for char in text.lower():
        kind = _char_kind(char)
        if kind == 1:
            current.append(char)
            continue
        if current:
            words.append("".join(current))
            current = []
        if kind == 2:
            words.append(char)
    if current:
        words.append("".join(current))
    return words


class UnicodeRougeTokenizer:
    """rouge-score tokenizer for any script; identical to rouge-score's default on Latin-script text.

    Default: lower-case, ``[^a-z0-9]+`` → space, Porter-stem words longer than 3 characters, keep only
    ``[a-z0-9]+`` tokens. Here: also the letters, digits and combining marks of non-Latin scripts form
    words, CJK characters are single tokens, and only ASCII words are stemmed (Porter is English).
    """

    def __init__(self, use_stemmer: bool = True):
        from nltk.stem import porter

        self.stemmer = porter.PorterStemmer() if use_stemmer else None  # as rouge_score.tokenizers

    def tokenize(self, text: str) -> list[str]:
        tokens = unicode_words(text)
        if self.stemmer is not None:
            tokens = [self.stemmer.stem(t) if len(t) > 3 and _ASCII_WORD.match(t) else t for t in tokens]
        return tokens


def _space_cjk(text: str) -> str:
    """Spaces around every CJK character (no-op for text without any)."""
    if not any(is_cjk(c) for c in text):
        return text
    return "".join(f" {c} " if is_cjk(c) else c for c in text)


def has_cjk(texts) -> bool:
    return any(is_cjk(c) for text in texts if text for c in text)


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


def rouge_scores(
    predictions: Sequence[str],
    references: References,
    *,
    rouge_types: Sequence[str] = ("rouge1", "rougeL"),
    use_stemmer: bool = True,
) -> dict[str, list[float]]:
    """Per-example ROUGE F-measures: ``{rouge_type: [f_1, ..., f_n]}``."""
    from rouge_score import rouge_scorer

    unknown = set(rouge_types) - set(ROUGE_TYPES)
    if unknown:
        raise ValueError(f"unknown ROUGE types {sorted(unknown)}; expected some of {ROUGE_TYPES}")
    refs = _ref_lists(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(rouge_types), tokenizer=UnicodeRougeTokenizer(use_stemmer))
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
    for sentence in _SENTENCE_END.split(_space_cjk(text).strip()):
        if sentence:
            words.extend(word_tokenize(sentence, preserve_line=True))
    return words


def meteor_scores(
    predictions: Sequence[str],
    references: References,
    *,
    alpha: float = 0.9,
    beta: float = 3.0,
    gamma: float = 0.5,
) -> list[float]:
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


def bleu_tokenization(predictions: Sequence[str], references: References) -> str:
    """``"zh"`` when any text holds CJK characters, else ``"13a"`` (sacrebleu's default)."""
    refs = _ref_lists(predictions, references)
    return "zh" if has_cjk(predictions) or any(has_cjk(r) for r in refs) else "13a"


def corpus_bleu(predictions: Sequence[str], references: References, tokenize: str | None = None) -> float:
    """sacrebleu corpus BLEU (0–100). Examples may have different numbers of references.

    ``tokenize``: a sacrebleu tokenization; default :func:`bleu_tokenization` (13a, or zh for CJK text).
    """
    import sacrebleu

    refs = _ref_lists(predictions, references)
    n_streams = max((len(r) for r in refs), default=1)
    # sacrebleu wants one stream per reference position; missing references are None
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(n_streams)]
    tokenize = tokenize or bleu_tokenization(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), streams, tokenize=tokenize).score)


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def compute_metrics(
    predictions: Sequence[str],
    references: References,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    use_stemmer: bool = True,
    per_example: bool = False,
) -> dict[str, Any]:
    """Corpus-level metrics as LongLaMP reports them (see the module docstring).

    Args:
        predictions: generated texts.
        references: one reference string (or a list of them) per prediction.
        metrics: any of ``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum``, ``meteor``, ``bleu``.
        use_stemmer: Porter stemming inside ROUGE.
        per_example: also return ``{"per_example": {metric: [score per example]}}`` (not BLEU,
            which is corpus-level only).

    Returns:
        ``{"n": number of examples, <metric>: mean score, ..., "unscorable": [indices]}``; ``unscorable``
        lists the examples whose prediction and references hold no scorable token (e.g. emoji only: no
        letter, digit or CJK character), which every metric scores 0 — a reason, not a silent 0.
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
            result["bleu_tokenize"] = bleu_tokenization(predictions, references)
        else:
            result[m] = _mean(per[m])
    result["unscorable"] = unscorable_examples(predictions, references)
    if per_example:
        result["per_example"] = per
    return result


def unscorable_examples(predictions: Sequence[str], references: References) -> list[int]:
    """Indices of the examples whose prediction and every reference have no word the metrics can score."""
    refs = _ref_lists(predictions, references)
    return [
        i for i, (pred, rs) in enumerate(zip(predictions, refs)) if not unicode_words(pred)
        and not any(unicode_words(r) for r in rs)
    ]  # fmt: skip
