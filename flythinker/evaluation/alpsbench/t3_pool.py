"""T3 as the paper runs it: the model reads the whole candidate pool (100–1,000 memories) and names one.

The re-ranking protocol (:class:`~.retrieval.LMReranker`) lets the LM choose only among a
first-stage top-k, so its accuracy is capped by that stage's recall. Here the LM sees every
candidate as ``[memory_id] value`` and answers ``{"selected_memory_id": "<id>"}`` (the assistant
turn pre-filled with the opening; a restarted JSON is read too).

When the pool does not fit ``lm.max_prompt_tokens`` it is **chunked**, stated in every row's
``reason`` and counted: candidates are packed in input order into chunks that fit (the prompt
without candidates, plus each line's token count, plus the answer budget), the LM picks one per
chunk, and the picks form the next round's pool, until one chunk holds the whole remaining pool.
A pick that names no candidate of its chunk drops that chunk; a row whose every chunk fails in a
round is a failed row (never a silent guess).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

POOL_SYSTEM = (
    "You are a helpful assistant with a memory of the user. Exactly one of the listed memories is the one "
    "needed to answer the user's query. Reply with its id only, as JSON: "
    '{"selected_memory_id": "<id>"}.'
)
POOL_PREFILL = '{"selected_memory_id": "'
_ID_IN_JSON = re.compile(r'"selected_memory_id"\s*:\s*"([^"]*)"')


def _line(c: dict[str, Any]) -> str:
    return f"[{c['memory_id']}] {c.get('value') or ''}"


def pool_messages(query: str, candidates: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    lines = "\n".join(_line(c) for c in candidates)
    user = f"Memories about the user:\n{lines}\n\nUser query: {query}\n\nWhich memory id is needed?"
    return [{"role": "system", "content": POOL_SYSTEM}, {"role": "user", "content": user}]


def parse_pick(text: str, ids: Sequence[str]) -> str | None:
    """The candidate id the model named (after the pre-fill, or in a restarted JSON), or ``None``."""
    found = _ID_IN_JSON.search(text)
    raw = found.group(1) if found else text.split('"', 1)[0]
    raw = raw.strip().strip("[]").strip()
    by_norm = {str(i).strip().lower(): i for i in ids}
    return by_norm.get(raw.lower())


class WholePoolSelector:
    """The whole-pool protocol over a :class:`~.lm.LocalLM` (see the module docstring)."""

    name = "whole-pool"

    def __init__(self, lm, answer_tokens: int = 0, id_tokens: int = 16) -> None:
        self.lm, self.answer_tokens, self.id_tokens = lm, int(answer_tokens), int(id_tokens)

    def chunks(self, query: str, candidates: Sequence[dict[str, Any]]) -> list[list[int]]:
        """Indices of ``candidates`` packed in order into prompts that fit the budget."""
        lm = self.lm
        budget = lm.max_prompt_tokens - self.id_tokens
        base = lm.count(pool_messages(query, []), POOL_PREFILL)
        cost = [len(lm.tokenizer.encode(_line(c) + "\n", add_special_tokens=False)) for c in candidates]
        out: list[list[int]] = []
        current: list[int] = []
        used = base
        for i, c in enumerate(cost):
            if base + c > budget:
                raise ValueError(
                    f"--max-prompt-tokens {lm.max_prompt_tokens}: one T3 candidate alone does not fit the "
                    f"whole-pool prompt ({base + c} tokens with the answer budget); raise it"
                )
            if current and used + c > budget:
                out.append(current)
                current, used = [], base
            current.append(i)
            used += c
        if current:
            out.append(current)
        # the per-line estimate ignores merges across lines: split any chunk that does not really fit
        fitted: list[list[int]] = []
        stack = list(reversed(out))
        while stack:
            chunk = stack.pop()
            if (
                len(chunk) > 1
                and lm.count(pool_messages(query, [candidates[i] for i in chunk]), POOL_PREFILL) > budget
            ):
                half = len(chunk) // 2
                stack += [chunk[half:], chunk[:half]]
            else:
                fitted.append(chunk)
        return fitted

    def select(self, view: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(chosen candidate index or -1, a record of the rounds: chunks per round, failed picks)."""
        cands = view["candidate_memories"]
        alive = list(range(len(cands)))
        record: dict[str, Any] = {"candidates": len(cands), "chunks_per_round": [], "bad_picks": 0}
        while alive:
            chunks = self.chunks(view["query"], [cands[i] for i in alive])
            record["chunks_per_round"].append(len(chunks))
            prompts = [
                self.lm.render(pool_messages(view["query"], [cands[alive[i]] for i in ch]), POOL_PREFILL)
                for ch in chunks
            ]
            texts = self.lm.generate(prompts, self.id_tokens, desc="t3 whole pool")
            winners = []
            for ch, text in zip(chunks, texts):
                ids = [cands[alive[i]]["memory_id"] for i in ch]
                pick = parse_pick(text, ids)
                if pick is None:
                    record["bad_picks"] += 1
                    continue
                winners.append(alive[ch[ids.index(pick)]])
            if len(chunks) == 1:
                return (winners[0] if winners else -1), record
            if not winners or len(winners) >= len(alive):
                return -1, record
            alive = winners
        return -1, record

    def predict_many(self, views: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
        from flythinker.evaluation.alpsbench.retrieval import answer_with_picks

        picks = [self.select(v) for v in views]
        answers = answer_with_picks(self.lm, views, [c for c, _ in picks], self.answer_tokens)
        out = []
        for v, (c, rec), ans in zip(views, picks, answers):
            rounds = rec["chunks_per_round"]
            reason = (
                f"whole pool of {rec['candidates']} read in {sum(rounds)} chunk(s) over {len(rounds)} "
                f"round(s) {json.dumps(rounds)}; {rec['bad_picks']} unusable pick(s)"
            )
            sel = v["candidate_memories"][c]["memory_id"] if c >= 0 else ""
            out.append({"answer": ans, "reason": reason, "selected_memory_id": sel})
        return out
