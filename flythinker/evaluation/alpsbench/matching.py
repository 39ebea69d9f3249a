"""AlpsBench's memory matcher (the paper's algorithmic T1/T2 score), exact to the official code.

Ported from ``src/agents/compare_memory_records.py`` of ThisIsCosine/AlpsBench (MIT, commit
``0fd801c``); every constant and rounding step below is theirs.

Pair score of a gold item g and a predicted item p::

    score = clip01(0.40·label_sim + 0.40·value_sim + 0.10·type_match + 0.10·conf_score)

* ``label_sim`` = 2·LCP / (len_a + len_b) over the non-empty ``/`` segments of the raw labels
  (0 if either has none);
* ``value_sim`` = 0.6·Jaccard(token sets) + 0.4·difflib ratio, on values normalised by
  :func:`normalize_value` (0 if either raw value is empty);
* ``type_match`` = 1 if the raw ``type`` values are equal;
* confidences: missing or unparseable → 1.0, clipped to [0, 1] ("nan" parses and, as in the
  official code, costs no penalty);
  ``conf_score = max(0, 1 − max(0, |Δ| − 0.2) / 0.8)``.

Matching: ``greedy`` sorts all pairs by score (stable, gold-major), takes a pair while its score is
≥ 0.30 and both sides are unused; ``hungarian`` takes the optimal one-to-one assignment (maximum
total score, :func:`hungarian`) and drops pairs < 0.30. Pair scores are rounded to 4 decimals.

Metrics: TP = #pairs; P = TP/#pred, R = TP/#gold (0 on an empty side; both empty → 0), F1, each
rounded to 4 decimals; ``avg_pair_score`` = Σ rounded pair scores / max(TP, 1) (reported rounded to
4 decimals); ``algo_score_100 = 100·(0.6·avg_pair_score + 0.4·F1)`` (with the unrounded average,
then rounded to 4 decimals). An optional judge gives ``final = 0.5·algo + 0.5·judge``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from difflib import SequenceMatcher
from typing import Any

MIN_PAIR_SCORE = 0.30
W_LABEL, W_VALUE, W_TYPE, W_CONFIDENCE = 0.40, 0.40, 0.10, 0.10
TOKEN_WEIGHT = 0.6
QUALITY_WEIGHT, COVERAGE_WEIGHT = 0.60, 0.40
JUDGE_WEIGHT = 0.50
MATCHINGS = ("greedy", "hungarian")

_WS = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s/.\-]+")


def normalize_value(value: Any) -> str:
    """Lowercase, strip, punctuation other than ``/ . -`` and word characters → space, collapse spaces.

    ``None`` → ``""``; other non-strings → ``json.dumps(value, ensure_ascii=False)`` first.
    """
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            text = str(value)
    text = _PUNCT.sub(" ", text.lower().strip())
    return _WS.sub(" ", text)


def _tokens(value: Any) -> list[str]:
    return [t for t in normalize_value(value).split(" ") if t]


def jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    """|A ∩ B| / |A ∪ B| of the token sets (0 if either is empty)."""
    if not a or not b:
        return 0.0
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb)


def label_similarity(label_a: Any, label_b: Any) -> float:
    """2·LCP / (len_a + len_b) over the non-empty ``/`` segments of the raw labels."""
    pa = [p for p in ("" if label_a is None else str(label_a)).split("/") if p]
    pb = [p for p in ("" if label_b is None else str(label_b)).split("/") if p]
    if not pa or not pb:
        return 0.0
    lcp = 0
    for xa, xb in zip(pa, pb):
        if xa != xb:
            break
        lcp += 1
    return 2.0 * lcp / (len(pa) + len(pb))


def value_similarity(value_a: Any, value_b: Any, token_weight: float = TOKEN_WEIGHT) -> float:
    """``token_weight``·Jaccard + (1 − token_weight)·difflib ratio of the normalised values."""
    if not value_a or not value_b:
        return 0.0
    token_score = jaccard(_tokens(value_a), _tokens(value_b))
    char_score = SequenceMatcher(None, normalize_value(value_a), normalize_value(value_b)).ratio()
    tw = max(0.0, min(1.0, token_weight))
    return tw * token_score + (1.0 - tw) * char_score


def normalize_confidence(value: Any) -> float:
    """A confidence in [0, 1]; missing or unparseable → 1.0 (no penalty)."""
    try:
        conf = float(value)
    except (TypeError, ValueError):
        return 1.0
    if conf < 0.0:
        return 0.0
    if conf > 1.0:
        return 1.0
    return conf  # NaN passes through, as in the official code: its penalty is then 0


def confidence_score(conf_a: float, conf_b: float) -> tuple[float, float, float]:
    """(score, |Δ|, penalty): no penalty up to |Δ| = 0.2, then linear down to 0 at |Δ| = 1."""
    diff = abs(conf_a - conf_b)
    penalty = max(0.0, diff - 0.2)
    score = max(0.0, 1.0 - penalty / 0.8)
    return score, diff, penalty


@dataclass
class MatchPair:
    """One accepted (gold, pred) pair with its rounded component scores."""

    gold_id: str
    pred_id: str
    score: float
    label_sim: float
    value_sim: float
    type_match: bool
    confidence_score: float
    confidence_diff: float
    confidence_penalty: float
    gold_index: int
    pred_index: int


def _item(item: Any) -> Mapping[str, Any]:
    return item if isinstance(item, Mapping) else {}


def item_score(
    gold: Mapping[str, Any], pred: Mapping[str, Any]
) -> tuple[float, float, float, bool, float, float, float]:
    """(score, label_sim, value_sim, type_match, conf_score, conf_diff, conf_penalty) of one pair."""
    ls = label_similarity(gold.get("label", ""), pred.get("label", ""))
    vs = value_similarity(gold.get("value", ""), pred.get("value", ""))
    tm = gold.get("type") == pred.get("type")
    cs, cd, cp = confidence_score(
        normalize_confidence(gold.get("confidence")), normalize_confidence(pred.get("confidence"))
    )
    score = W_LABEL * ls + W_VALUE * vs + W_TYPE * (1.0 if tm else 0.0) + W_CONFIDENCE * cs
    return min(1.0, max(0.0, score)), ls, vs, tm, cs, cd, cp


def _pair(gold: Sequence[Mapping], pred: Sequence[Mapping], i: int, j: int, parts) -> MatchPair:
    s, ls, vs, tm, cs, cd, cp = parts
    return MatchPair(
        gold_id=str(gold[i].get("memory_id", "")),
        pred_id=str(pred[j].get("memory_id", "")),
        score=round(s, 4),
        label_sim=round(ls, 4),
        value_sim=round(vs, 4),
        type_match=bool(tm),
        confidence_score=round(cs, 4),
        confidence_diff=round(cd, 4),
        confidence_penalty=round(cp, 4),
        gold_index=i,
        pred_index=j,
    )


def hungarian(cost: Sequence[Sequence[float]]) -> list[tuple[int, int]]:
    """Minimum-cost perfect assignment of a square matrix, O(n³) (Kuhn–Munkres with potentials).

    Returns ``(row, col)`` pairs ordered by column — the order of the official implementation,
    which this follows step for step so that ties resolve the same way.
    """
    n = len(cost)
    if any(len(row) != n for row in cost):
        raise ValueError(
            f"hungarian() needs a square cost matrix, got {n} rows of lengths "
            f"{sorted({len(r) for r in cost})}"
        )
    inf = float("inf")
    u = [0.0] * (n + 1)
    v = [0.0] * (n + 1)
    p = [0] * (n + 1)
    way = [0] * (n + 1)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = [inf] * (n + 1)
        used = [False] * (n + 1)
        while True:
            used[j0] = True
            i0 = p[j0]
            delta = inf
            j1 = 0
            for j in range(1, n + 1):
                if used[j]:
                    continue
                cur = cost[i0 - 1][j - 1] - u[i0] - v[j]
                if cur < minv[j]:
                    minv[j] = cur
                    way[j] = j0
                if minv[j] < delta:
                    delta = minv[j]
                    j1 = j
            for j in range(n + 1):
                if used[j]:
                    u[p[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while True:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
            if j0 == 0:
                break
    return [(p[j] - 1, j - 1) for j in range(1, n + 1) if p[j] != 0]


def _match(gold: Sequence[Mapping], pred: Sequence[Mapping], matching: str) -> list[MatchPair]:
    parts = [[item_score(g, p) for p in pred] for g in gold]
    if matching == "greedy":
        order = sorted(
            ((parts[i][j][0], i, j) for i in range(len(gold)) for j in range(len(pred))),
            key=lambda x: x[0],
            reverse=True,
        )  # stable: equal scores stay gold-major
        used_g: set[int] = set()
        used_p: set[int] = set()
        pairs = []
        for s, i, j in order:
            if s < MIN_PAIR_SCORE:
                break
            if i in used_g or j in used_p:
                continue
            used_g.add(i)
            used_p.add(j)
            pairs.append(_pair(gold, pred, i, j, parts[i][j]))
        return pairs
    if matching == "hungarian":
        n = max(len(gold), len(pred))
        if n == 0:
            return []
        dummy = 1.0 - max(MIN_PAIR_SCORE - 0.01, 0.0)  # the official padding cost (any constant works)
        cost = [
            [1.0 - parts[i][j][0] if i < len(gold) and j < len(pred) else dummy for j in range(n)]
            for i in range(n)
        ]
        return [
            _pair(gold, pred, i, j, parts[i][j])
            for i, j in hungarian(cost)
            if i < len(gold) and j < len(pred) and parts[i][j][0] >= MIN_PAIR_SCORE
        ]
    raise ValueError(f"unknown matching {matching!r}; expected one of {MATCHINGS}")


def prf1(tp: int, pred_n: int, gold_n: int) -> dict[str, float]:
    """P = TP/#pred, R = TP/#gold (0 on an empty side), F1; each rounded to 4 decimals."""
    p = tp / pred_n if pred_n else 0.0
    r = tp / gold_n if gold_n else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4)}


JUDGE_PAIR_PENALTIES = {
    "EQUIVALENT": 0.0,
    "VALUE_DRIFT": 12.0,
    "HALLUCINATION": 15.0,
    "LABEL_WRONG": 6.0,
    "TYPE_WRONG": 6.0,
    "OVERGENERAL": 3.0,
    "UNDERGENERAL": 3.0,
    "OTHER": 4.0,
}


def judge_reviews_score_100(reviews: Mapping[str, Any]) -> float:
    """The official penalty score of a judge's structured reviews, in [0, 100].

    100 − Σ pair penalties (table above, unknown error types 4) − 10 per missing item that should
    have been extracted − 15 per hallucinated extra, each times the severity multiplier
    0.5 + 0.5·clip(int(severity), 0, 3) (1.0 when ``int(severity)`` fails: text, NaN, ±Infinity).
    """

    def mult(sev: Any) -> float:
        try:
            return 0.5 + 0.5 * min(3, max(0, int(sev)))
        except (TypeError, ValueError, OverflowError):  # the official `except Exception`: ±Infinity too
            return 1.0

    score = 100.0
    for r in reviews.get("pair_reviews") or []:
        score -= JUDGE_PAIR_PENALTIES.get(str(r.get("error_type", "OTHER")).upper(), 4.0) * mult(
            r.get("severity", 1)
        )
    for r in reviews.get("missing_reviews") or []:
        if r.get("should_have_extracted") is True:
            score -= 10.0 * mult(r.get("severity", 1))
    for r in reviews.get("extra_reviews") or []:
        if r.get("hallucinated") is True:
            score -= 15.0 * mult(r.get("severity", 1))
    return round(min(100.0, max(0.0, score)), 4)


MatchJudge = Callable[[dict[str, Any]], float]
"""A pluggable judge: gets ``{"gold_memory_items", "pred_memory_items", "pairs", "missing", "extra"}``
and returns a score in [0, 100] (e.g. ``judge_reviews_score_100`` of a local LM's reviews)."""


def score_memory_match(
    gold_items: Sequence[Any],
    pred_items: Sequence[Any],
    matching: str = "greedy",
    judge: MatchJudge | None = None,
    judge_weight: float = JUDGE_WEIGHT,
) -> dict[str, Any]:
    """The paper's matcher score of predicted against gold memory items (see the module docstring).

    Returns ``precision, recall, f1, avg_pair_score, algo_score_100, final_score_100`` (= algo
    without a judge; ``(1 − w)·algo + w·judge`` with one), ``judge_score_100`` (or ``None``),
    ``pairs`` (``[gold_id, pred_id, score]`` in the matcher's order), ``pair_details``,
    ``missing_in_pred`` and ``extra_in_pred`` (memory ids).
    """
    if matching not in MATCHINGS:
        raise ValueError(f"unknown matching {matching!r}; expected one of {MATCHINGS}")
    gold = [_item(g) for g in (gold_items or [])]
    pred = [_item(p) for p in (pred_items or [])]
    pairs = _match(gold, pred, matching)
    tp = len(pairs)
    coverage = prf1(tp, len(pred), len(gold))
    avg = sum(p.score for p in pairs) / max(tp, 1)
    algo = min(100.0, max(0.0, 100.0 * (QUALITY_WEIGHT * avg + COVERAGE_WEIGHT * coverage["f1"])))
    used_g = {p.gold_index for p in pairs}
    used_p = {p.pred_index for p in pairs}
    missing = [str(g.get("memory_id", "")) for i, g in enumerate(gold) if i not in used_g]
    extra = [str(p.get("memory_id", "")) for j, p in enumerate(pred) if j not in used_p]
    result: dict[str, Any] = {
        **coverage,
        "avg_pair_score": round(avg, 4),
        "algo_score_100": round(algo, 4),
        "judge_score_100": None,
        "final_score_100": round(algo, 4),
        "matching": matching,
        "pairs": [[p.gold_id, p.pred_id, p.score] for p in pairs],
        "pair_details": [asdict(p) for p in pairs],
        "missing_in_pred": missing,
        "extra_in_pred": extra,
    }
    if judge is not None:
        payload = {
            "gold_memory_items": list(gold),
            "pred_memory_items": list(pred),
            "pairs": [
                {"gold": gold[p.gold_index], "pred": pred[p.pred_index], "algo": asdict(p)} for p in pairs
            ],
            "missing": [g for i, g in enumerate(gold) if i not in used_g],
            "extra": [p for j, p in enumerate(pred) if j not in used_p],
        }
        judged = float(judge(payload))
        if not 0.0 <= judged <= 100.0:
            raise ValueError(f"the match judge returned {judged}; a judge score must lie in [0, 100]")
        w = min(1.0, max(0.0, judge_weight))
        result["judge_score_100"] = round(judged, 4)
        result["final_score_100"] = round((1.0 - w) * algo + w * judged, 4)
    return result
