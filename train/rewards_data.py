"""Readers for empathy reward data: PERM-style records and PersonaEmp sessions.

PERM record (one JSON object per line of a ``.jsonl`` file, or a ``.json`` list)::

    {"persona": "..." | {"identity": "...", ...}, "scenario": "...", "dialogue": ["first user turn", ...]}

``dialogue`` items may also be chat messages ``{"role": ..., "content": ...}``; the first turn is the
seeker's query (as in PERM's GRPO data).

PersonaEmp session (arXiv 2606.00728)::

    {"persona": "..." | {...}, "extracted_memory": ["...", ...] | "..." | {key: value},
     "queries": [{"query": "...", "category": "...", "situation": "...",
                  "relevant_mem": ["...", ...] | "...", "criteria": "..." | ["...", ...] | null}, ...]}

Malformed input raises :class:`RewardDataError` naming the file, the line (``.jsonl``) or record
index (``.json``), the field and what was expected.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from flythinker.rewards.samples import EmpathySample


class RewardDataError(ValueError):
    """A malformed PERM / PersonaEmp record (message: file, line or record, field, expected)."""


@dataclass
class PermRecord:
    persona: str
    scenario: str
    dialogue: list[str]
    source: str = ""

    @property
    def query(self) -> str:
        return self.dialogue[0]

    def sample(self, analysis: str = "", response: str = "") -> EmpathySample:
        return EmpathySample(
            query=self.query,
            persona=self.persona,
            scenario=self.scenario,
            analysis=analysis,
            response=response,
        )


@dataclass
class PersonaEmpQuery:
    query: str
    category: str
    situation: str
    relevant_mem: list[str]
    criteria: str | None = None


@dataclass
class PersonaEmpSession:
    persona: str
    queries: list[PersonaEmpQuery]
    extracted_memory: list[str] = field(default_factory=list)
    source: str = ""

    def samples(self, use_relevant_mem: bool = True) -> list[EmpathySample]:
        """One PereGRM sample per query: memories = the query's ``relevant_mem`` (or all memories)."""
        return [
            EmpathySample(
                query=q.query,
                persona=self.persona,
                scenario=q.situation,
                memories=(q.relevant_mem or self.extracted_memory)
                if use_relevant_mem
                else self.extracted_memory,
                criteria=q.criteria,
            )
            for q in self.queries
        ]


def _iter_json_records(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """(location, object) pairs: ``file:line N`` for JSONL, ``file:record N`` for a JSON list."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise RewardDataError(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise RewardDataError(f"{path}:line {e.lineno}: invalid JSON ({e.msg})") from e
            if not isinstance(data, list):
                raise RewardDataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
            for i, obj in enumerate(data):
                yield f"{path}:record {i}", obj
            return
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:line {n}", json.loads(line)
            except json.JSONDecodeError as e:
                raise RewardDataError(f"{path}:line {n}: invalid JSON ({e.msg})") from e


def _fail(where: str, name: str, expected: str, value: Any) -> RewardDataError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return RewardDataError(f"{where}: field {name!r}: expected {expected}, got {shown}")


def _require(obj: Any, where: str, name: str) -> Any:
    if not isinstance(obj, dict):
        raise RewardDataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if name not in obj:
        raise RewardDataError(f"{where}: missing field {name!r} (fields present: {sorted(obj)})")
    return obj[name]


def _text(value: Any, where: str, name: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise _fail(where, name, "a non-empty string" if not allow_empty else "a string", value)
    return value


def _persona(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if isinstance(value.get("identity"), str):
            return value["identity"]
        if all(isinstance(v, (str, int, float)) for v in value.values()):
            return "\n".join(f"{k}: {v}" for k, v in value.items())
    raise _fail(
        where, "persona", "a string or an object with a string 'identity' (or flat string values)", value
    )


def _string_list(value: Any, where: str, name: str, allow_empty: bool = True) -> list[str]:
    if value is None and allow_empty:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return [f"{k}: {v}" for k, v in value.items()]
    if isinstance(value, list):
        out = []
        for i, v in enumerate(value):
            if isinstance(v, dict) and isinstance(v.get("content"), str):
                v = v["content"]
            if not isinstance(v, str):
                raise _fail(where, f"{name}[{i}]", "a string (or a message with string 'content')", v)
            out.append(v)
        if out or allow_empty:
            return out
    raise _fail(where, name, "a " + ("" if allow_empty else "non-empty ") + "list of strings", value)


def parse_perm_record(obj: Any, where: str = "<record>") -> PermRecord:
    persona = _persona(_require(obj, where, "persona"), where)
    scenario = _text(_require(obj, where, "scenario"), where, "scenario", allow_empty=True)
    dialogue = _string_list(_require(obj, where, "dialogue"), where, "dialogue", allow_empty=False)
    if not dialogue[0].strip():
        raise _fail(where, "dialogue[0]", "a non-empty first user turn (the query)", dialogue[0])
    return PermRecord(persona=persona, scenario=scenario, dialogue=dialogue, source=where)


def read_perm_records(path: str | os.PathLike) -> list[PermRecord]:
    """All PERM records of a ``.jsonl`` / ``.json`` file."""
    return [parse_perm_record(obj, where) for where, obj in _iter_json_records(path)]


def _criteria(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(f"- {v}" for v in value) if value else None
    raise _fail(where, "criteria", "a string, a list of strings or null", value)


def parse_personaemp_session(obj: Any, where: str = "<session>") -> PersonaEmpSession:
    persona = _persona(_require(obj, where, "persona"), where)
    memory = _string_list(obj.get("extracted_memory"), where, "extracted_memory")
    raw_queries = _require(obj, where, "queries")
    if not isinstance(raw_queries, list) or not raw_queries:
        raise _fail(where, "queries", "a non-empty list of query objects", raw_queries)
    queries = []
    for i, q in enumerate(raw_queries):
        qwhere = f"{where}: queries[{i}]"
        queries.append(
            PersonaEmpQuery(
                query=_text(_require(q, qwhere, "query"), qwhere, "query"),
                category=_text(q.get("category", ""), qwhere, "category", allow_empty=True),
                situation=_text(q.get("situation", ""), qwhere, "situation", allow_empty=True),
                relevant_mem=_string_list(q.get("relevant_mem"), qwhere, "relevant_mem"),
                criteria=_criteria(q.get("criteria"), qwhere),
            )
        )
    return PersonaEmpSession(persona=persona, queries=queries, extracted_memory=memory, source=where)


def read_personaemp_sessions(path: str | os.PathLike) -> list[PersonaEmpSession]:
    """All PersonaEmp sessions of a ``.jsonl`` / ``.json`` file."""
    return [parse_personaemp_session(obj, where) for where, obj in _iter_json_records(path)]
