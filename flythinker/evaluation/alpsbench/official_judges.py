"""The paper's API judges, run through :class:`flythinker.rewards.endpoint.ChatEndpoint`.

The judge *prompts* are the benchmark's text: they are read at run time from the user's copy of
the official code (ThisIsCosine/AlpsBench at commit ``0fd801c``, the last one with ``src/agents``;
the public release ``811f0a9`` removed them) and never stored in this repository. What the official
code *does* with them is re-implemented here from its definitions:

T1 / T2 (``src/agents/compare_memory_records.py``): the judge gets, as system prompt, the string
``system`` of ``build_llm_judge_from_config`` and, as user prompt, the literal prefix of its
``user`` f-string followed by ``json.dumps(payload, ensure_ascii=False)`` of
:func:`memory_judge_payload` (greedy matching, the curators' setting), with
``temperature=0, max_tokens=8000``. The reply is parsed like ``_extract_json`` (whole text, else the
outermost ``{…}``) into ``pair_reviews`` / ``missing_reviews`` / ``extra_reviews`` and scored by
:func:`~.matching.judge_reviews_score_100`; per row::

    final_score_100 = round(0.5 · algo_score_100 + 0.5 · llm_score_100, 4)

with the unrounded greedy ``algo_score_100``. A reply that cannot be parsed made the official
scorer raise (the row was lost); here the row is kept, marked ``judge_failed`` and left out of the
means, and the count is reported.

T4 (``src/agents/task4_memory_grounded_qa/<ability>/curator.py``, module constant
``JUDGE_PROMPT``): user prompt ``json.dumps({"selected_memory", "model_answer",
"used_memory_fact"}, ensure_ascii=True)``, no decoding parameters. The reply is parsed like the
curators (a fenced ```` ```json ```` block or the first ``{`` to the last ``}``). Abilities 1, 3
and 4 (and 2 through the ``ability2_general`` prompt) return ``overall_weighted_score``, the
official per-row score; the judge applies the prompt's critical rule itself. Ability 1's rule
(alignment < 0.5 ⇒ overall ≤ 0.2) can be checked from the reply: violations are counted, not
corrected (the official code does not correct them either). Ability 5 returns dimensions only.
An unparseable reply is the official fallback (every dimension 0): ``overall_weighted_score`` 0 and
``status`` ``unparsed``.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flythinker.evaluation.alpsbench.matching import (
    JUDGE_WEIGHT,
    judge_reviews_score_100,
    score_memory_match,
)

OFFICIAL_COMMIT = "0fd801c"
MEMORY_JUDGE_FILE = "src/agents/compare_memory_records.py"
T4_JUDGE_DIRS = {  # benchmark ability -> official curator folder
    "ability1": "ability1",
    "ability2": "ability2_general",
    "ability3": "ability3",
    "ability4": "ability4",
    "ability5": "ability5",
}
T4_DIMENSIONS = {  # the numeric fields each official prompt asks for
    "ability1": ("alignment", "naturalness", "honesty", "personalization", "overall_weighted_score"),
    "ability2": ("respect_score", "naturalness", "overall_weighted_score"),
    "ability3": ("immersion_score", "consistency_score", "overall_weighted_score"),
    "ability4": ("adherence_score", "helpfulness_score", "overall_weighted_score"),
    "ability5": ("emotional_grounding", "fact_match", "empathy_quality"),
}
MEMORY_JUDGE_PARAMS = {"temperature": 0, "max_tokens": 8000}
OUTPUT_SCHEMA = {
    "pair_reviews": "list[{gold_id,pred_id,ok(bool),error_type,severity(0-3),rationale}]",
    "missing_reviews": "list[{id,should_have_extracted(bool),severity(0-3),rationale}]",
    "extra_reviews": "list[{id,hallucinated(bool),severity(0-3),rationale}]",
}


class OfficialCodeError(ValueError):
    """The --alpsbench-code folder is not a usable copy of the official code."""


def _strings_in(tree: ast.AST, name: str) -> list[str]:
    """Values assigned to ``name`` in ``tree``: a str constant, or an f-string's text before its first field."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            value = node.value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                found.append(value.value)
            elif isinstance(value, ast.JoinedStr):
                text = ""
                for part in value.values:
                    if not isinstance(part, ast.Constant):
                        break
                    text += part.value
                found.append(text)
    return found


def _read_string(root: Path, rel: str, name: str, function: str | None = None) -> str:
    path = root / rel
    hint = (
        f"point --alpsbench-code at a clone of ThisIsCosine/AlpsBench checked out at "
        f"{OFFICIAL_COMMIT} (git checkout {OFFICIAL_COMMIT}; later commits removed the judges)"
    )
    if not path.is_file():
        raise OfficialCodeError(f"--alpsbench-code {root}: {rel} not found; {hint}")
    tree: ast.AST = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    if function is not None:
        funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function]
        if not funcs:
            raise OfficialCodeError(f"{path}: no function {function}(); {hint}")
        tree = funcs[0]
    values = _strings_in(tree, name)
    if len(values) != 1 or not values[0].strip():
        raise OfficialCodeError(
            f"{path}: expected one non-empty string assigned to {name!r}, found {len(values)}; {hint}"
        )
    return values[0]


@dataclass(frozen=True)
class OfficialPrompts:
    """The judge prompts of the official code (read from ``root``, never stored here)."""

    memory_system: str
    memory_user_prefix: str
    task4: Mapping[str, str]  # benchmark ability -> system prompt

    @classmethod
    def load(cls, root: str | Path) -> OfficialPrompts:
        root = Path(root)
        if not root.is_dir():
            raise OfficialCodeError(f"--alpsbench-code {root}: no such folder")
        fn = "build_llm_judge_from_config"
        return cls(
            memory_system=_read_string(root, MEMORY_JUDGE_FILE, "system", fn),
            memory_user_prefix=_read_string(root, MEMORY_JUDGE_FILE, "user", fn),
            task4={
                ability: _read_string(
                    root, f"src/agents/task4_memory_grounded_qa/{folder}/curator.py", "JUDGE_PROMPT"
                )
                for ability, folder in T4_JUDGE_DIRS.items()
            },
        )


# ---------------------------------------------------------------------- T1 / T2


def _key(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return json.dumps(value, sort_keys=True, ensure_ascii=False)


def memory_judge_payload(
    gold_items: Sequence[Mapping[str, Any]], pred_items: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(payload, greedy match) as the official ``build_judge_payload`` builds it.

    Items are looked up by ``memory_id`` (a later item with the same id replaces an earlier one,
    as in the official dict); each pair's ``algo`` holds the official ``MatchPair`` fields.
    """
    gold = [dict(g) for g in gold_items]
    pred = [dict(p) for p in pred_items]
    match = score_memory_match(gold, pred, "greedy")
    gold_map = {_key(g.get("memory_id", "")): g for g in gold}
    pred_map = {_key(p.get("memory_id", "")): p for p in pred}
    pairs = []
    for d in match["pair_details"]:
        g, p = gold[d["gold_index"]], pred[d["pred_index"]]
        algo = {
            "gold_id": g.get("memory_id", ""),
            "pred_id": p.get("memory_id", ""),
            **{
                k: d[k]
                for k in (
                    "score",
                    "label_sim",
                    "value_sim",
                    "type_match",
                    "confidence_score",
                    "confidence_diff",
                    "confidence_penalty",
                )
            },
            "label_gold": g.get("label", ""),
            "label_pred": p.get("label", ""),
            "value_gold": g.get("value", ""),
            "value_pred": p.get("value", ""),
        }
        pairs.append(
            {
                "gold": gold_map.get(_key(algo["gold_id"]), {}),
                "pred": pred_map.get(_key(algo["pred_id"]), {}),
                "algo": algo,
            }
        )
    used_g = {d["gold_index"] for d in match["pair_details"]}
    used_p = {d["pred_index"] for d in match["pair_details"]}
    missing = [_key(g.get("memory_id", "")) for i, g in enumerate(gold) if i not in used_g]
    extra = [_key(p.get("memory_id", "")) for j, p in enumerate(pred) if j not in used_p]
    payload = {
        "evidence": {
            "mode": "memory_only",
            "gold_memory_items": list(gold_map.values()),
            "pred_memory_items": list(pred_map.values()),
        },
        "pairs": pairs,
        "missing": [gold_map[m] for m in missing if m in gold_map],
        "extra": [pred_map[m] for m in extra if m in pred_map],
        "output_schema": OUTPUT_SCHEMA,
    }
    return payload, match


class JudgeReplyError(ValueError):
    """A judge reply that cannot be read as the review the prompt asks for."""


def parse_memory_review(text: str) -> dict[str, Any]:
    """The official ``_extract_json`` (whole text, else the outermost ``{…}``), checked for scoring."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        found = re.search(r"\{.*\}", text, re.DOTALL)
        if not found:
            raise JudgeReplyError("the judge reply holds no JSON object") from None
        try:
            data = json.loads(found.group(0))
        except json.JSONDecodeError as exc:
            raise JudgeReplyError(f"the judge reply's JSON is invalid ({exc.msg})") from None
    if not isinstance(data, dict):
        raise JudgeReplyError(f"the judge reply is a JSON {type(data).__name__}, not an object")
    for key in ("pair_reviews", "missing_reviews", "extra_reviews"):
        reviews = data.get(key) or []
        if not isinstance(reviews, list) or not all(isinstance(r, dict) for r in reviews):
            raise JudgeReplyError(f"the judge reply's {key} is not a list of objects")
    return data


def memory_judge_messages(prompts: OfficialPrompts, payload: Mapping[str, Any]) -> list[dict[str, str]]:
    user = prompts.memory_user_prefix + json.dumps(payload, ensure_ascii=False)
    return [{"role": "system", "content": prompts.memory_system}, {"role": "user", "content": user}]


def judge_memory_rows(
    endpoint, prompts: OfficialPrompts, rows: Sequence[tuple[Sequence[Any], Sequence[Any]]]
) -> list[dict[str, Any]]:
    """Per (gold items, predicted items) row: ``llm_score_100``, ``final_score_100``, ``status``.

    ``status`` is ``ok``, ``judge_failed`` (unparseable reply; scores ``None``) or ``endpoint_error``.
    """
    payloads, algos = [], []
    for gold, pred in rows:
        payload, match = memory_judge_payload(
            [g for g in gold if isinstance(g, Mapping)], [p for p in pred if isinstance(p, Mapping)]
        )
        payloads.append(payload)
        algos.append(match)
    replies = endpoint.complete_many(
        [(memory_judge_messages(prompts, p), MEMORY_JUDGE_PARAMS) for p in payloads]
    )
    out = []
    for match, reply in zip(algos, replies):
        algo = _unrounded_algo(match)
        if not isinstance(reply, str):
            out.append(
                {
                    "status": "endpoint_error",
                    "error": str(reply),
                    "llm_score_100": None,
                    "final_score_100": None,
                    "algo_score_100": match["algo_score_100"],
                }
            )
            continue
        try:
            review = parse_memory_review(reply)
        except JudgeReplyError as exc:
            out.append(
                {
                    "status": "judge_failed",
                    "error": str(exc),
                    "llm_score_100": None,
                    "final_score_100": None,
                    "algo_score_100": match["algo_score_100"],
                }
            )
            continue
        llm = judge_reviews_score_100(review)
        final = (1.0 - JUDGE_WEIGHT) * algo + JUDGE_WEIGHT * llm
        out.append(
            {
                "status": "ok",
                "llm_score_100": llm,
                "final_score_100": round(final, 4),
                "algo_score_100": match["algo_score_100"],
            }
        )
    return out


def _unrounded_algo(match: Mapping[str, Any]) -> float:
    """The official blend uses the unrounded algo score: 100·(0.6·avg + 0.4·F1), clipped."""
    pairs = match["pair_details"]
    avg = sum(p["score"] for p in pairs) / max(len(pairs), 1)
    return min(100.0, max(0.0, 100.0 * (0.6 * avg + 0.4 * match["f1"])))


# ---------------------------------------------------------------------- T4


def parse_t4_reply(text: str) -> dict[str, Any] | None:
    """The curators' parse: a fenced block if any, then the first ``{`` to the last ``}``; ``None`` if unusable."""
    s = text.strip()
    if "```json" in s:
        s = s.split("```json")[1].split("```")[0]
    elif "```" in s:
        s = s.split("```")[1].split("```")[0]
    start, end = s.find("{"), s.rfind("}")
    try:
        data = json.loads(s[start : end + 1] if start != -1 and end != -1 else s)
    except (json.JSONDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def t4_judge_messages(
    prompts: OfficialPrompts, ability: str, selected_memory: Any, answer: str, used_fact: str
) -> list[dict[str, str]]:
    payload = {"selected_memory": selected_memory, "model_answer": answer, "used_memory_fact": used_fact}
    return [
        {"role": "system", "content": prompts.task4[ability]},
        {"role": "user", "content": json.dumps(payload, ensure_ascii=True)},
    ]


def judge_t4_rows(
    endpoint, prompts: OfficialPrompts, ability: str, items: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Per item (``selected_memory``, ``answer``, ``used_memory_fact``): the reply's numeric fields and ``status``.

    ``status``: ``ok``; ``incomplete`` (a field missing or not a finite number: ``None``, a missing
    overall counts 0); ``unparsed`` (the official fallback: every dimension and the overall 0);
    ``endpoint_error`` (no reply; scores ``None``). ``critical_rule_violated`` is set for ability 1.
    """
    if ability not in T4_DIMENSIONS:
        raise ValueError(f"unknown task4 ability {ability!r}; expected one of {sorted(T4_DIMENSIONS)}")
    dims = T4_DIMENSIONS[ability]
    replies = endpoint.complete_many(
        [
            (
                t4_judge_messages(
                    prompts, ability, it["selected_memory"], it["answer"], it["used_memory_fact"]
                ),
                {},
            )
            for it in items
        ]
    )
    out = []
    for reply in replies:
        if not isinstance(reply, str):
            out.append({"status": "endpoint_error", "error": str(reply), **{d: None for d in dims}})
            continue
        data = parse_t4_reply(reply)
        if data is None:
            out.append({"status": "unparsed", **{d: 0.0 for d in dims}})
            continue
        values = {d: _number(data.get(d)) for d in dims}
        row: dict[str, Any] = {"status": "ok" if None not in values.values() else "incomplete", **values}
        if values.get("overall_weighted_score", 0.0) is None:
            row["overall_weighted_score"] = 0.0  # a reply without a usable overall scores 0
        if ability == "ability1" and values["alignment"] is not None:
            row["critical_rule_violated"] = values["alignment"] < 0.5 and row["overall_weighted_score"] > 0.2
        out.append(row)
    return out
