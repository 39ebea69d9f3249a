"""Parsing of the policy's ``# Analysis`` / ``# Response`` sections and token masks for them.

PERM's policy answers in the format::

    # Analysis
    <the supporter's reading of the seeker's situation and emotion>

    # Response
    <the reply shown to the seeker>

Resonation is judged on the analysis, expression and reception on the response.  A missing
section parses as the empty string (and is then scored as an empty text, as in PERM).  Headings
match ``#`` (any number of them) followed by ``Analysis`` / ``Response`` and an optional colon,
case-insensitive, at the start of a line; text after the heading on its line belongs to the section.  The analysis runs from its heading to the response heading (or to the end); the
response runs from its heading to the end.  PERM's own parser needs *both* headings and returns
two empty strings otherwise; ``strict_pair=True`` reproduces that.

Everything here works on character offsets, so a token mask follows from any fast tokenizer's
``offset_mapping`` (:func:`span_token_mask`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

_ANALYSIS = re.compile(r"^[ \t]*#+[ \t]*analysis\b[ \t]*:?", re.IGNORECASE | re.MULTILINE)
_RESPONSE = re.compile(r"^[ \t]*#+[ \t]*response\b[ \t]*:?", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Sections:
    """The two sections' texts and their (start, end) character spans in the parsed text.

    A span is ``None`` when its section is missing; an empty section has an empty span.
    """

    analysis: str
    response: str
    analysis_span: tuple[int, int] | None
    response_span: tuple[int, int] | None


def _stripped_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def parse_sections(text: str, *, strict_pair: bool = False) -> Sections:
    """Split a policy output into analysis and response (missing section → ``""``)."""
    if not isinstance(text, str):
        raise TypeError(f"parse_sections expects a str, got {type(text).__name__}")
    a = _ANALYSIS.search(text)
    r = _RESPONSE.search(text, a.end() if a else 0)
    if strict_pair and (a is None or r is None):
        return Sections("", "", None, None)
    analysis_span = response_span = None
    if a is not None:
        analysis_span = _stripped_span(text, a.end(), r.start() if r else len(text))
    if r is not None:
        response_span = _stripped_span(text, r.end(), len(text))
    return Sections(
        analysis=text[slice(*analysis_span)] if analysis_span else "",
        response=text[slice(*response_span)] if response_span else "",
        analysis_span=analysis_span,
        response_span=response_span,
    )


def completion_text(completion: object) -> str:
    """The text of one TRL completion: a ``str``, or a conversational list of messages (last one)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)):
        if not completion:
            return ""
        return completion_text(completion[-1])
    raise TypeError(f"a completion must be a str or a list of chat messages, got {type(completion).__name__}")


def span_token_mask(offsets: torch.Tensor, spans: list[tuple[int, int] | None]) -> torch.Tensor:
    """Bool mask ``[B, T]`` of the tokens overlapping each row's character span.

    ``offsets`` is a tokenizer's ``offset_mapping`` ``[B, T, 2]`` (special and pad tokens have
    (0, 0) and never overlap a non-empty span).  A ``None`` or empty span gives an all-false row.
    """
    if offsets.dim() != 3 or offsets.shape[-1] != 2:
        raise ValueError(f"offsets must have shape [B, T, 2], got {tuple(offsets.shape)}")
    if len(spans) != offsets.shape[0]:
        raise ValueError(f"got {len(spans)} spans for a batch of {offsets.shape[0]}")
    starts = torch.tensor([s[0] if s else 0 for s in spans], dtype=offsets.dtype).unsqueeze(1)
    ends = torch.tensor([s[1] if s else 0 for s in spans], dtype=offsets.dtype).unsqueeze(1)
    tok_start, tok_end = offsets[..., 0], offsets[..., 1]
    return (tok_end > tok_start) & (tok_start < ends) & (tok_end > starts)
