"""Metrics by output position — the "context drift" analysis of think-while-generating.

Does quality fall off as a long generation goes on? Each prediction and its reference are cut
into aligned word windows and window k of the prediction is scored against window k of the
reference; scores are averaged per window over the examples. Two windowings:

* **fixed** (``window_words=N``, default 50): window k holds words ``[k·N, (k+1)·N)``. An example
  contributes to window k when its reference has words there; if the prediction has none there
  (it stopped early) it scores 0 — stopping early is a failure to cover the reference's later
  content. Windows where only the prediction has words are not scored (nothing to compare to) but
  are counted in ``n_extra``.
* **relative** (``num_windows=K``): each text is cut into K contiguous parts of as-equal-as-possible
  word counts (sizes differ by at most one, like ``numpy.array_split``), so window k covers the
  same *fraction* of the prediction and of the reference. Windows whose reference part is empty
  (reference shorter than K words) are skipped; an empty prediction part scores 0.

Words are white-space separated tokens, re-joined with single spaces before scoring (line breaks
are lost, which neither ROUGE nor METEOR uses). Aligning by position, not by content, is the
point: it measures whether what is written at a given depth matches what the reference says there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flythinker.evaluation.metrics import meteor_scores, rouge_scores

POSITION_METRICS: tuple[str, ...] = ("rouge1", "rougeL", "meteor")


def split_windows(text: str, *, window_words: int | None = None, num_windows: int | None = None) -> list[str]:
    """Cut ``text`` into word windows (exactly one of ``window_words`` / ``num_windows``).

    ``window_words=N``: consecutive N-word windows (the last may be shorter; none for empty text).
    ``num_windows=K``: exactly K parts of near-equal word counts (some empty when the text has
    fewer than K words).
    """
    if (window_words is None) == (num_windows is None):
        raise ValueError("pass exactly one of window_words and num_windows")
    words = text.split()
    if window_words is not None:
        if window_words < 1:
            raise ValueError(f"window_words must be >= 1, got {window_words}")
        return [" ".join(words[i : i + window_words]) for i in range(0, len(words), window_words)]
    if num_windows < 1:
        raise ValueError(f"num_windows must be >= 1, got {num_windows}")
    base, extra = divmod(len(words), num_windows)
    out, start = [], 0
    for k in range(num_windows):
        size = base + (1 if k < extra else 0)
        out.append(" ".join(words[start : start + size]))
        start += size
    return out


def metrics_by_position(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    window_words: int | None = 50,
    num_windows: int | None = None,
    metrics: Sequence[str] = POSITION_METRICS,
    use_stemmer: bool = True,
) -> list[dict[str, Any]]:
    """Average metrics per output window (see the module docstring for the two windowings).

    Args:
        predictions / references: one reference string per prediction.
        window_words: fixed windows of this many words (default 50); set ``None`` when using
            ``num_windows``.
        num_windows: relative windows (K equal fractions of each text).
        metrics: subset of ``rouge1``, ``rouge2``, ``rougeL``, ``meteor``.

    Returns:
        One dict per window index k, in order: ``window`` (k), ``start_word``/``end_word`` (fixed)
        or ``start_frac``/``end_frac`` (relative), ``n`` (examples scored), ``n_missing``
        (of those, predictions with no words there), ``n_extra`` (fixed only) and the mean of
        every metric.
    """
    if num_windows is not None:
        window_words = None
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references")
    allowed = {"rouge1", "rouge2", "rougeL", "meteor"}
    if set(metrics) - allowed:
        raise ValueError(f"position metrics must be among {sorted(allowed)}, got {list(metrics)}")
    pairs: dict[int, list[tuple[str, str]]] = {}
    extra: dict[int, int] = {}
    for pred, ref in zip(predictions, references):
        pw = split_windows(pred, window_words=window_words, num_windows=num_windows)
        rw = split_windows(ref, window_words=window_words, num_windows=num_windows)
        for k in range(max(len(pw), len(rw))):
            p = pw[k] if k < len(pw) else ""
            r = rw[k] if k < len(rw) else ""
            if r:
                pairs.setdefault(k, []).append((p, r))
            elif p:
                extra[k] = extra.get(k, 0) + 1
    rows = []
    for k in range(max([*pairs, *extra], default=-1) + 1):
        items = pairs.get(k, [])
        row: dict[str, Any] = {"window": k}
        if window_words is not None:
            row.update(start_word=k * window_words, end_word=(k + 1) * window_words, n_extra=extra.get(k, 0))
        else:
            row.update(start_frac=k / num_windows, end_frac=(k + 1) / num_windows)
        row.update(n=len(items), n_missing=sum(1 for p, _ in items if not p))
        preds = [p for p, _ in items]
        refs = [r for _, r in items]
        per: dict[str, list[float]] = {}
        rouge_types = [m for m in metrics if m.startswith("rouge")]
        if items and rouge_types:
            per.update(rouge_scores(preds, refs, rouge_types=rouge_types, use_stemmer=use_stemmer))
        if items and "meteor" in metrics:
            per["meteor"] = meteor_scores(preds, refs)
        for m in metrics:
            vals = per.get(m, [])
            row[m] = float(sum(vals) / len(vals)) if vals else float("nan")
        rows.append(row)
    return rows
