"""The local judge with the real SmolLM2-135M-Instruct: validity, determinism, and the observed rate
at which an obviously good reply is ranked above an obviously bad one (recorded, not asserted).

Observed on the 8 pairs below (2 CPU cores, PERM prompts, next-token expected value): reception 2/8,
expression 3/8, resonation 6/8 (with a caring vs dismissive analysis) — a 135M Q4 model barely
separates the replies (score gaps ≤ 0.35), so only validity and determinism are asserted.
"""

from __future__ import annotations

import pytest
import torch

from flythinker.rewards.judge import LocalJudge
from flythinker.rewards.samples import EmpathySample

GOOD_BAD = [
    (
        "I failed my driving test for the third time today. I feel like such a loser.",
        "Three tries is exhausting, and it's natural to feel crushed right now. Failing a test doesn't make you a loser; "
        "it shows you keep showing up. What part of the test tripped you up? We could plan the next attempt together.",
        "Whatever. Some people just can't drive. Stop whining about it.",
    ),
    (
        "My dog died this morning. He was with me for 14 years.",
        "I'm so sorry. Fourteen years is a whole chapter of your life, and losing him leaves a real hole. "
        "It's okay to grieve as much as you need. Would you like to tell me about him?",
        "It's just a dog. You can buy another one tomorrow.",
    ),
    (
        "I moved to a new city and I don't know anyone. The evenings are so lonely.",
        "Moving somewhere new is brave, and those quiet evenings can feel really heavy. Loneliness after a move is "
        "very common. Is there something you enjoy, like a class or a club, where you might meet people?",
        "That's your problem, you chose to move. Nobody cares.",
    ),
    (
        "My manager yelled at me in front of the whole team. I wanted to disappear.",
        "That sounds humiliating, and wanting to disappear makes complete sense. Nobody deserves to be treated like "
        "that in front of others. How are you feeling now? Would it help to think about how to respond?",
        "You probably deserved it. Do better next time.",
    ),
    (
        "I've been studying for months but I still feel like I'll fail my exams.",
        "It sounds like you've put in a huge amount of work, and the worry is still weighing on you. That fear is "
        "common before big exams. Would it help to look at what you already know well and make a calm plan?",
        "If you are going to fail, just accept it. Studying is pointless for you.",
    ),
    (
        "My best friend stopped replying to my messages and I don't know why.",
        "That silence can hurt a lot, especially from someone so close. It's natural to wonder what happened. "
        "Would it feel okay to gently ask them if everything is alright between you?",
        "Maybe they just don't like you anymore. Get over it.",
    ),
    (
        "I got rejected from my dream job after the final interview.",
        "Getting so close and then hearing no is really painful. Reaching the final round shows they saw real "
        "strength in you. Take some time to feel disappointed; when you're ready, we can think about next steps.",
        "Lol, you weren't good enough. Move on.",
    ),
    (
        "My parents are getting divorced and I feel like it's my fault.",
        "I'm really sorry you're going through this. Many people feel that way, but a divorce is a decision between "
        "your parents, not something you caused. Your feelings matter. Do you have someone you can talk to about it?",
        "It probably is your fault. Deal with it.",
    ),
]


@pytest.mark.slow
def test_smollm2_judge_valid_deterministic_and_ranking_rate(record_property):
    from flythinker.modeling.smollm import load_smollm2

    model, tokenizer = load_smollm2()
    judge = LocalJudge(model, tokenizer, batch_size=8)
    assert judge.score_prefix == "Score: "  # SmolLM2 encodes " 3" as "Ġ" + "3"
    samples = []
    for query, good, bad in GOOD_BAD:
        samples.append(
            EmpathySample(query=query, analysis="The user is hurting and needs comfort.", response=good)
        )
        samples.append(EmpathySample(query=query, analysis="The user is whining.", response=bad))
    scores = judge.score(samples, ["reception"])["reception"]
    assert all(1.0 <= s <= 5.0 for s in scores) and len(set(scores)) > 1
    wins = sum(g > b for g, b in zip(scores[0::2], scores[1::2]))
    record_property("smollm2_reception_good_above_bad", f"{wins}/{len(GOOD_BAD)}")
    print(f"SmolLM2-135M reception: good above bad in {wins}/{len(GOOD_BAD)} pairs")
    # Other batch composition: equal up to float rounding (exact repeat determinism: tests/rewards/test_judge.py).
    again = judge.score(samples[:8], ["reception"])["reception"]
    torch.testing.assert_close(torch.tensor(again), torch.tensor(scores[:8]), rtol=0, atol=1e-4)
