"""Parsing a model's JSON answer, repairing what is recoverable, validating it against the track.

:func:`extract_json` takes the first JSON value in a text (code fences and chatter around it are
ignored). A value cut off by the token limit is closed (open string, then the open brackets, in
order); if that still does not parse, the text is cut back to the last complete element before
the cut (at most ``max_cuts`` times). Trailing commas are removed. Every repair is reported, so a
runner can record it.

:func:`parse_prediction` turns the JSON into the track's contract fields or raises
:class:`OutputParseError` saying what is wrong (the runner's retry prompt quotes it).
"""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"```(?:json)?\s*(.*?)(?:```|$)", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


class OutputParseError(ValueError):
    """A model output that does not contain the JSON a track needs."""


def _scan(text: str) -> tuple[int | None, list[str], bool, list[int]]:
    """(end index of the first complete value or None, open closers, inside a string, comma positions)."""
    stack: list[str] = []
    in_str = esc = False
    commas: list[int] = []
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if stack and stack[-1] == ch:
                stack.pop()
                if not stack:
                    return i + 1, [], False, commas
        elif ch == ",":
            commas.append(i)
    return None, stack, in_str, commas


def _close(fragment: str) -> str:
    _, stack, in_str, _ = _scan(fragment)
    text = fragment + ('"' if in_str else "")
    text = text.rstrip()
    if text.endswith(":"):
        text += " null"
    text = text.rstrip(",")
    return text + "".join(reversed(stack))


def _can_close(rest: str) -> bool:
    """Whether the text after a quote lets that quote end a string: ``: } ]``, the end, or a comma
    followed by the start of a JSON value (``" { [``, a digit, ``-``, true / false / null) or the end."""
    rest = rest.lstrip()
    if not rest or rest[0] in ":}]":
        return True
    if rest[0] != ",":
        return False
    after = rest[1:].lstrip()
    return not after or after[0] in '"{[-0123456789' or after.startswith(("true", "false", "null"))


def escape_stray_quotes(text: str) -> str:
    """Escape a ``"`` inside a string unless what follows can end a string (see :func:`_can_close`).

    Small models write ``"value": "the word "you" is wrong"``; this turns the inner quotes into
    ``\\"`` so the value parses.
    """
    out: list[str] = []
    in_str = esc = False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                if not _can_close(text[i + 1 :]):
                    out.append('\\"')
                    continue
                in_str = False
        elif ch == '"':
            in_str = True
        out.append(ch)
    return "".join(out)


def extract_json(text: str, max_cuts: int = 8) -> tuple[Any, list[str]]:
    """(the first JSON object/array in ``text``, the list of repairs applied).

    Tries the text as it is, then with stray quotes escaped (:func:`escape_stray_quotes`).
    """
    try:
        return _extract_json(text, max_cuts)
    except OutputParseError as first:
        starts = [i for i in (text.find("{"), text.find("[")) if i != -1]
        body = text[min(starts) :] if starts else text
        fixed = escape_stray_quotes(body)
        if fixed == body:
            raise
        try:
            value, repairs = _extract_json(fixed, max_cuts)
        except OutputParseError:
            raise first from None
        return value, ["escaped stray quotes", *repairs]


def _extract_json(text: str, max_cuts: int) -> tuple[Any, list[str]]:
    repairs: list[str] = []
    fence = _FENCE.search(text)
    if fence and ("{" in fence.group(1) or "[" in fence.group(1)):
        text = fence.group(1)
    starts = [i for i in (text.find("{"), text.find("[")) if i != -1]
    if not starts:
        raise OutputParseError("no JSON object or array in the output")
    body = text[min(starts) :]
    end, _, _, commas = _scan(body)
    if end is not None:
        candidate = body[:end]
        try:
            return json.loads(candidate), repairs
        except json.JSONDecodeError:
            fixed = _TRAILING_COMMA.sub(r"\1", candidate)
            try:
                value = json.loads(fixed)
                repairs.append("removed trailing commas")
                return value, repairs
            except json.JSONDecodeError as exc:
                raise OutputParseError(f"invalid JSON ({exc.msg} at character {exc.pos})") from exc
    # truncated: close it, else cut back to the last complete element
    fragment = body
    for attempt in range(max_cuts + 1):
        closed = _TRAILING_COMMA.sub(r"\1", _close(fragment))
        try:
            value = json.loads(closed)
            repairs.append(
                "closed a truncated value"
                if attempt == 0
                else f"cut {attempt} unfinished element(s) and closed"
            )
            return value, repairs
        except json.JSONDecodeError:
            pass
        cut = [c for c in _scan(fragment)[3] if c < len(fragment)]
        if not cut:
            break
        fragment = fragment[: cut[-1]]
    raise OutputParseError("truncated JSON that could not be repaired")


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def parse_prediction(track: str, text: str) -> tuple[dict[str, Any], list[str]]:
    """The contract fields (without ``benchmark_id``) of a task1/2/4 output, and the repairs made."""
    task = track.split("_", 1)[0]
    value, repairs = extract_json(text)
    if task in ("task1", "task2"):
        if isinstance(value, dict):
            items = value.get("memory_items", value.get("answer"))
            if items is None:
                raise OutputParseError("the JSON object has no 'memory_items' list")
        else:
            items = value
            repairs.append("wrapped a bare list as memory_items")
        if not isinstance(items, list):
            raise OutputParseError(f"'memory_items' must be a list, got {type(items).__name__}")
        kept = [dict(i) for i in items if isinstance(i, dict)]
        if len(kept) != len(items):
            repairs.append(f"dropped {len(items) - len(kept)} non-object item(s)")
        return {"memory_items": kept}, repairs
    if task == "task4":
        if not isinstance(value, dict):
            raise OutputParseError("expected a JSON object with 'used_memory_fact' and 'answer'")
        if any(r.startswith(("closed a truncated", "cut ")) for r in repairs):
            raise OutputParseError("the answer was cut off by the token limit (raise --t4-max-new-tokens)")
        if "answer" not in value:
            raise OutputParseError("the JSON object has no 'answer'")
        if "used_memory_fact" not in value:
            raise OutputParseError("the JSON object has no 'used_memory_fact'")
        fact, answer = value.get("used_memory_fact"), value.get("answer", "")
        if not _as_text(answer).strip():
            raise OutputParseError("the answer is empty")
        if not isinstance(fact, str) or not isinstance(answer, str):
            repairs.append("non-string fields written as JSON text")
        return {"used_memory_fact": _as_text(fact), "answer": _as_text(answer)}, repairs
    raise OutputParseError(f"{track} answers are not parsed from JSON")
