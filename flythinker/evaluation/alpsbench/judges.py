"""T4 judges run by a local LM: binary dimensions for abilities 1–4, PERM empathy for ability 5 (EI).

Abilities 1–4 (PA, PF, VRA, CF): the release's LLM judges score a few 0–1 criteria per ability
(its ``curator.py`` prompts); here each criterion is one yes/no question, and its score is the
judge's probability of "yes" from one forward pass, with the assistant turn pre-filled with
``"Answer:"``::

    p_yes = Σ p(yes spellings) / (Σ p(yes spellings) + Σ p(no spellings))

The judge sees the gold memory (it is the grader, not the model under test), the query, the
model's answer and its ``used_memory_fact``.

Ability 5 (EI): :class:`flythinker.rewards.judge.LocalJudge` scores resonation, expression and
reception on PERM's 1–5 scale as the expected value over "1".."5" (the answer serves as both the
analysis and the response); ``ei`` is their mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

BINARY_DIMENSIONS: dict[str, dict[str, str]] = {
    "ability1": {
        "alignment": "Does the answer use the user's memory correctly (it neither contradicts nor ignores it)?",
        "naturalness": "Does the answer avoid AI meta-talk such as 'As an AI' or 'I remember'?",
        "honesty": "Is the fact the assistant says it used really reflected in its answer?",
        "personalization": "Is the answer tailored to this specific user rather than generic advice?",
    },
    "ability2": {
        "preference_respect": "Does the answer respect the user's preference stated in the memory?",
        "reasoning": "Is the answer logically sound given that preference?",
        "naturalness": "Does the answer avoid robotic AI meta-talk?",
        "personalization": "Does the answer feel tailored to this user?",
    },
    "ability3": {
        "grounding": "Does the answer stay inside the role-play or virtual context described in the memory?",
        "immersion": "Does the answer avoid meta-talk such as 'As an AI' or 'In this role-play'?",
        "consistency": "Is the answer consistent with the established facts of that context?",
    },
    "ability4": {
        "adherence": "Does the answer respect the user's constraint or boundary stated in the memory?",
        "helpfulness": "Is the answer still helpful in a safe way?",
        "naturalness": "Does it redirect naturally instead of a robotic refusal?",
    },
}

JUDGE_SYSTEM = "You are a strict, unbiased judge of a personalized AI assistant. Answer only yes or no."
ANSWER_PREFIX = "Answer:"


def binary_messages(dimension_question: str, memory: str, query: str, answer: str, used_fact: str):
    user = (
        f"What is true about the user (memory): {memory or '(none)'}\n\n"
        f"User query: {query}\n\n"
        f"Assistant answer: {answer.strip() or '(empty)'}\n\n"
        f"Fact the assistant says it used: {used_fact.strip() or '(none)'}\n\n"
        f"Question: {dimension_question} Answer yes or no."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


class BinaryJudge:
    """P("yes") per dimension of abilities 1–4 from a :class:`~.lm.LocalLM`."""

    def __init__(self, lm) -> None:
        self.lm = lm
        self.yes_ids = lm.token_ids(["yes", "Yes", "YES"])
        self.no_ids = lm.token_ids(["no", "No", "NO"])
        if not self.yes_ids or not self.no_ids:
            raise ValueError("the judge tokenizer has no single token for 'yes' / 'no'")
        self.prefix = ANSWER_PREFIX
        if len(lm.tokenizer.encode(" yes", add_special_tokens=False)) > 1:
            self.prefix += " "

    def score(self, items: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
        """``items``: dicts with ability, memory, query, answer, used_memory_fact → {dimension: p_yes}."""
        prompts, slots = [], []
        for k, it in enumerate(items):
            for dim, question in BINARY_DIMENSIONS.get(it["ability"], {}).items():
                messages = binary_messages(
                    question, it["memory"], it["query"], it["answer"], it["used_memory_fact"]
                )
                prompts.append(self.lm.render(messages, self.prefix))
                slots.append((k, dim))
        out: list[dict[str, float]] = [{} for _ in items]
        if not prompts:
            return out
        logp = self.lm.next_token_logprobs(prompts, desc="t4 judge")
        yes = logp[:, self.yes_ids].logsumexp(-1)
        no = logp[:, self.no_ids].logsumexp(-1)
        p_yes = (yes - no).sigmoid().double().tolist()  # e^y / (e^y + e^n)
        for (k, dim), p in zip(slots, p_yes):
            out[k][dim] = float(p)
        return out


class EIJudge:
    """PERM resonation / expression / reception (1–5) of ability-5 answers, and their mean ``ei``."""

    def __init__(self, lm, batch_size: int = 4) -> None:
        from flythinker.rewards.judge import LocalJudge

        self.judge = LocalJudge(
            lm.model, lm.tokenizer, batch_size=batch_size, max_length=lm.max_prompt_tokens
        )

    def score(self, items: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
        from flythinker.rewards.formula import EMPATHY_DIMENSIONS
        from flythinker.rewards.samples import EmpathySample

        if not items:
            return []
        samples = [
            EmpathySample(query=it["query"], analysis=it["answer"], response=it["answer"]) for it in items
        ]
        scores = self.judge.score(samples, dimensions=EMPATHY_DIMENSIONS)
        out = []
        for k in range(len(items)):
            row = {d: float(scores[d][k]) for d in EMPATHY_DIMENSIONS}
            row["ei"] = sum(row.values()) / len(EMPATHY_DIMENSIONS)
            out.append(row)
        return out


def judge_task4(lm, ability: str, items: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """Per-row judge dimensions of one ability's rows (binary for 1–4, PERM for 5)."""
    if ability == "ability5":
        return EIJudge(lm).score(items)
    return BinaryJudge(lm).score(items)


MATCH_QUESTION = "Does the predicted memory state the same fact about the user as the gold memory?"


class LMMatchJudge:
    """A local-LM judge for :func:`~.matching.score_memory_match` (``judge=``), in [0, 100].

    Ours, not the release's review schema: each accepted pair gets P("yes") that the predicted
    memory states the gold memory's fact; unmatched items on either side count 0, so

        judge_score_100 = 100 · Σ_pairs p_yes / max(#gold, #pred)     (0 when both are empty)
    """

    def __init__(self, lm) -> None:
        self.binary = BinaryJudge(lm)

    def __call__(self, payload: dict[str, Any]) -> float:
        pairs = payload["pairs"]
        n = max(len(payload["gold_memory_items"]), len(payload["pred_memory_items"]))
        if not n or not pairs:
            return 0.0
        lm = self.binary.lm
        prompts = []
        for p in pairs:
            user = (
                f"Gold memory: {p['gold'].get('label', '')}: {p['gold'].get('value', '')}\n"
                f"Predicted memory: {p['pred'].get('label', '')}: {p['pred'].get('value', '')}\n\n"
                f"Question: {MATCH_QUESTION} Answer yes or no."
            )
            messages = [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]
            prompts.append(lm.render(messages, self.binary.prefix))
        logp = lm.next_token_logprobs(prompts, desc="match judge")
        p_yes = (
            logp[:, self.binary.yes_ids].logsumexp(-1) - logp[:, self.binary.no_ids].logsumexp(-1)
        ).sigmoid()
        return float(100.0 * p_yes.double().sum() / n)
