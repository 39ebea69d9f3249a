"""Judge prompts and rubrics for PERM (arXiv 2601.10532) and PereGRM (arXiv 2606.00728).

PERM judges an empathetic reply from three perspectives:

* supporter **resonation** (on the ``# Analysis`` section): how accurately the supporter enters
  the seeker's internal frame of reference;
* supporter **expression** (on the ``# Response``): how the understanding is communicated;
* seeker **reception** (on the ``# Response``): how the seeker, with their hidden need, receives it;

plus a neutral **bystander** that rates the response on five items worth 0–20 each (content
effectiveness, logical structure and clarity, communication efficiency, objectivity and neutrality,
information accuracy), 0–100 in total.

The rubrics below follow PERM's five-level structure in our own words.  They are rewritten for a
*local* judge read by next-token probabilities: every prompt ends by asking for a single integer
1–5 and the assistant turn is pre-filled with ``SCORE_PREFIX``, so the next token is the score.  A
bystander item is asked on the same 1–5 scale and mapped to 0–20 by (s − 1)·5 (see
``flythinker.rewards.judge``).

PereGRM conditions the same structure on the user: a first prompt generates per-user, per-query
evaluation criteria from the user's memories and the query (:func:`criteria_generation_messages`),
and every scoring prompt then carries the memories and the criteria.
"""

from __future__ import annotations

from flythinker.rewards.samples import EmpathySample, format_memories

SCORE_PREFIX = "Score:"

RESONATION_RUBRIC = """Definition: how deeply and accurately the supporter enters the user's internal frame of \
reference: the explicit content, the implicit emotional undertones, their causes and what the \
experience means to this particular person.
1 - Wrong: contradicts the facts of the scenario, invents an emotion or cause, or ignores the core message.
2 - Surface labelling: names the obvious emotion or repeats the user's words, but not why they feel it.
3 - Explicit accuracy: the dominant emotion and its immediate cause are right, nothing deeper.
4 - Nuanced: integrates subtle or conflicting cues (persona vs. tone, mixed feelings) into a precise picture.
5 - Value-level: also explains the inner mechanism, linking the event to the person's values and needs."""

EXPRESSION_RUBRIC = """Definition: the quality, tone and effectiveness of how the reply conveys understanding \
and support: robotic and formulaic, or warm, adaptive and natural.
1 - Mechanical: cold, robotic or list-like, no emotional adaptation at all.
2 - Clinical: polite and correct but generic, built on filler phrases ("it is valid to feel...").
3 - Natural: a warm, direct, human tone, but broad rather than tailored to this person.
4 - Calibrated: tone fitted to this user's state and personality, a clear sense of being together in it.
5 - Artful: precise, vivid, memorable wording that reaches the user immediately, concise and warm."""

RECEPTION_RUBRIC = """Definition: the reply as the user receives it: does it find the user's hidden need \
(the unspoken psychological need) without being intrusive, and leave them feeling supported and \
wanting to continue? Imagine you are the user.
1 - Alienating: intrusive, dismissive, toxic or ignoring the user; the user stops talking.
2 - Superficial: polite and on topic but leaves the user's feelings unchanged; generic advice.
3 - Relieving: genuine warmth that eases the distress, but addresses the surface emotion only.
4 - Understood: addresses the hidden need with a useful, fitting perspective; the user feels understood.
5 - Moved: hidden need met with deep warmth; the user feels grateful and eager to share more."""

RUBRICS: dict[str, str] = {
    "resonation": RESONATION_RUBRIC,
    "expression": EXPRESSION_RUBRIC,
    "reception": RECEPTION_RUBRIC,
}

BYSTANDER_ITEMS: dict[str, str] = {
    "content_effectiveness": "Content effectiveness: does the reply address the user's concrete problem with "
    "practical, meaningful information instead of empty or generic statements?",
    "logical_clarity": "Logical structure and clarity: are the points clear, organised and coherently reasoned, "
    "without jumps or unsupported claims?",
    "communication_efficiency": "Communication efficiency: is the reply concise and focused, without padding, "
    "digressions or verbosity that adds no information?",
    "objectivity": "Objectivity and neutrality: is the reply grounded in what was said, with a rational, neutral "
    "tone and no excessive assumptions or value judgements?",
    "accuracy": "Information accuracy: are the statements accurate, specific and reasonable, the suggestions "
    "actionable and free of exaggeration?",
}

JUDGE_SYSTEM = (
    "You are an expert psychologist and empathy evaluator. You give objective, critical assessments "
    "strictly according to the rubric you are given."
)
BYSTANDER_SYSTEM = (
    "You are a neutral third-party evaluator of an AI's reply. You judge content quality, reasoning, "
    "efficiency, objectivity and factual precision only; emotional expressiveness alone earns nothing."
)
CRITERIA_SYSTEM = (
    "You are an expert in personalized emotional support. You write short, concrete evaluation "
    "criteria for what an empathetic reply to one specific user should do."
)

_ANSWER_RULE = "Answer with a single integer from 1 (worst) to 5 (best) and nothing else."


def _context_block(sample: EmpathySample) -> str:
    lines = []
    if sample.scenario:
        lines.append(f"Scenario:\n{sample.scenario}")
    if sample.persona:
        lines.append(f"User persona:\n{sample.persona}")
    if sample.memories:
        lines.append(f"What we know about this user (memories):\n{format_memories(sample.memories)}")
    lines.append(f"User query:\n{sample.query}")
    return "\n\n".join(lines)


def _criteria_block(sample: EmpathySample) -> str:
    if sample.criteria is None:
        return ""
    return (
        "\n\nPersonalized criteria for this user and query (apply them together with the rubric):\n"
        f"{sample.criteria}"
    )


def dimension_messages(dimension: str, sample: EmpathySample) -> list[dict[str, str]]:
    """Chat messages asking for a 1–5 score of ``dimension`` (resonation reads the analysis)."""
    if dimension not in RUBRICS:
        raise ValueError(f"unknown judge dimension {dimension!r}; expected one of {tuple(RUBRICS)}")
    judged, text = (
        ("analysis", sample.analysis) if dimension == "resonation" else ("response", sample.response)
    )
    user = (
        f"Evaluate the assistant's {judged} on the dimension **{dimension}**.\n\n"
        f"Rubric:\n{RUBRICS[dimension]}{_criteria_block(sample)}\n\n"
        f"{_context_block(sample)}\n\n"
        f"Assistant {judged}:\n{text if text.strip() else '(empty)'}\n\n"
        f"{_ANSWER_RULE}"
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def bystander_messages(item: str, sample: EmpathySample) -> list[dict[str, str]]:
    """Chat messages asking for a 1–5 score of one bystander item (mapped to 0–20 by the judge)."""
    if item not in BYSTANDER_ITEMS:
        raise ValueError(f"unknown bystander item {item!r}; expected one of {tuple(BYSTANDER_ITEMS)}")
    user = (
        f"{_context_block(sample)}\n\n"
        f"AI reply:\n{sample.response if sample.response.strip() else '(empty)'}\n\n"
        f"Rate the AI reply on this one criterion:\n{BYSTANDER_ITEMS[item]}{_criteria_block(sample)}\n"
        "Verbosity that adds no information lowers the score.\n\n"
        f"{_ANSWER_RULE}"
    )
    return [{"role": "system", "content": BYSTANDER_SYSTEM}, {"role": "user", "content": user}]


def criteria_generation_messages(
    query: str, memories: list[str], persona: str = "", situation: str = ""
) -> list[dict[str, str]]:
    """PereGRM step 1: ask the local LM for per-user, per-query evaluation criteria."""
    parts = []
    if persona:
        parts.append(f"User persona:\n{persona}")
    parts.append(f"What we know about this user (memories):\n{format_memories(memories)}")
    if situation:
        parts.append(f"Current situation:\n{situation}")
    parts.append(f"User query:\n{query}")
    user = (
        "\n\n".join(parts)
        + "\n\nWrite 3 to 5 short criteria, one per line starting with '-', saying what an empathetic reply "
        "to THIS user should do or avoid, based on their personality, history and current need."
    )
    return [{"role": "system", "content": CRITERIA_SYSTEM}, {"role": "user", "content": user}]
