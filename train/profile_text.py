"""Profile items as text, and the order in which a prompt drops them (see ``prompts.py`` for the budget).

* :func:`render_profile_item` / :func:`render_profile`: one item (or all) as a text block, fields one
  per line, the layout chosen from the item's own fields;
* :func:`relevance_scores`: lexical overlap of each item with the request, in [0, 1];
* :func:`drop_order`: the items' indices, first dropped first (``"oldest"`` or ``"least_relevant"``).

:class:`~flythinker.train.prompts.PromptBuilder` uses these; ``flythinker.train.prompts`` re-exports them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

ITEM_SEP = "\n\n"  # between profile items, and between the profile and the request

# ------------------------------------------------------------------------------------ rendering
_FIELD_LABELS: dict[str, tuple[tuple[str, str], ...]] = {
    "abstract_generation": (("title", "Title"), ("abstract", "Abstract")),
    "product_review": (
        ("description", "Product"),
        ("overall", "Rating"),
        ("summary", "Summary"),
        ("reviewText", "Review"),
    ),
    "topic_writing": (("summary", "Summary"), ("content", "Content")),
}


def render_profile_item(item: Mapping[str, Any], task: str | None = None) -> str:
    """One profile item as a text block, fields one per line.

    * abstract_generation: ``Title: …\\nAbstract: …``
    * product_review: ``Product: …\\nRating: …\\nSummary: …\\nReview: …`` (absent fields skipped)
    * topic_writing: ``Summary: …\\nContent: …``
    * reference-format items ``{"text": …}``: the text itself.

    The layout is chosen from the item's own fields (``task`` only breaks ties), so mixed sources
    render sensibly.
    """
    if "text" in item and len(item) == 1:
        return str(item["text"]).strip()
    order = [task] if task in _FIELD_LABELS else []
    order += [t for t in _FIELD_LABELS if t not in order]
    for name in order:
        labels = _FIELD_LABELS[name]
        if any(key in item for key, _ in labels if key in ("abstract", "reviewText", "content")):
            lines = [
                f"{label}: {str(item[key]).strip()}"
                for key, label in labels
                if item.get(key) not in (None, "")
            ]
            return "\n".join(lines)
    if "text" in item:
        return str(item["text"]).strip()
    return "\n".join(f"{k}: {v}" for k, v in item.items() if v not in (None, ""))


def render_profile(items: Iterable[Mapping[str, Any]], task: str | None = None) -> str:
    """All items rendered with :func:`render_profile_item`, separated by a blank line."""
    return ITEM_SEP.join(render_profile_item(it, task) for it in items)


# ------------------------------------------------------------------------------------ relevance
_STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were will with "
    "generate write abstract title review product topic post about".split()
)
_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS}


def relevance_scores(
    items: Sequence[Mapping[str, Any]], request: str, task: str | None = None
) -> list[float]:
    """Lexical overlap of each item with the request: |W(item) ∩ W(request)| / max(1, |W(request)|).

    W(text) is the set of lower-cased ``[a-z0-9]+`` words minus a small stop-word list (which also
    holds the LongLaMP instruction words "generate", "abstract", "title", ...). In [0, 1].
    """
    req = _words(request)
    denom = max(1, len(req))
    return [len(_words(render_profile_item(it, task)) & req) / denom for it in items]


def drop_order(
    items: Sequence[Mapping[str, Any]], request: str, policy: str = "oldest", task: str | None = None
) -> list[int]:
    """Indices of ``items`` in the order they are dropped (first = dropped first).

    ``"oldest"``: by ``date`` (string order, ISO dates) when every item has a string ``date``,
    else source order. ``"least_relevant"``: ascending :func:`relevance_scores`, ties by age.
    """
    n = len(items)
    if n and all(isinstance(it.get("date"), str) for it in items):
        by_age = sorted(range(n), key=lambda i: (items[i]["date"], i))
    else:
        by_age = list(range(n))
    if policy == "oldest":
        return by_age
    if policy == "least_relevant":
        scores = relevance_scores(items, request, task)
        age_rank = {idx: r for r, idx in enumerate(by_age)}
        return sorted(range(n), key=lambda i: (scores[i], age_rank[i]))
    raise ValueError(f"unknown profile_drop policy {policy!r}; expected 'oldest' or 'least_relevant'")
