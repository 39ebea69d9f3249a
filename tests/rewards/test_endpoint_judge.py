"""PERM / PereGRM through the endpoint client (the same prompts as LocalJudge, read from the reply)."""

from __future__ import annotations

import pytest

from flythinker.rewards.endpoint import ChatEndpoint
from flythinker.rewards.endpoint_judge import EndpointJudge, read_score
from flythinker.rewards.prompts import BYSTANDER_ITEMS
from flythinker.rewards.samples import EmpathySample
from flythinker.rewards.trl_rewards import PermRewardFunctions
from tests.stub_chat_server import StubChatServer

SAMPLES = [
    EmpathySample(query="My dog died", analysis="grief for a companion", response="I'm so sorry."),
    EmpathySample(query="I feel lonely", analysis="missing a friend", response="That sounds hard."),
]


def test_read_score():
    assert [read_score(t) for t in ("4", "Score: 3", "**5**/5", "I'd say 2.", "10", "3.5", "none")] == [
        4, 3, 5, 2, None, None, None,
    ]  # fmt: skip


def reply_by_prompt(body, headers):
    """Resonation 4, expression 2, reception 5, every bystander item 3; criteria as text."""
    system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
    text = system + user
    if "criteria" in text.lower() and "Score" not in text and body["max_tokens"] > 16:
        return 200, {"content": "be specific to the dog"}, {}
    for dim, score in (("resonation", "4"), ("expression", "Score: 2"), ("reception", "5 - moved")):
        if f"on the dimension **{dim}**" in user:
            return 200, {"content": score}, {}
    return 200, {"content": "3"}, {}


def test_perm_scores_and_rewards_through_the_endpoint(tmp_path):
    with StubChatServer(reply_by_prompt, max_requests=100) as srv:
        judge = EndpointJudge(ChatEndpoint(srv.url, "judge", api_key_env=None, cache_dir=tmp_path / "c"))
        got = judge.score(SAMPLES)
        n = len(srv.requests)
        assert judge.score(SAMPLES) == got and len(srv.requests) == n  # the cache answers a rerun
        # it is a scorer for the GRPO reward functions: S_bys/100 − 1 with every item 3 → 50/100 − 1
        fns = PermRewardFunctions(judge, variant="perm")
        completion = "# Analysis\ngrief for a companion\n# Response\nI'm so sorry."
        assert fns.bystander(["My dog died"], [completion], query=["My dog died"]) == [pytest.approx(-0.5)]
    assert (
        got["resonation"] == [4.0, 4.0] and got["expression"] == [2.0, 2.0] and got["reception"] == [5.0, 5.0]
    )
    assert got["bystander"] == [len(BYSTANDER_ITEMS) * (3 - 1) * 5.0] * 2  # each item (s − 1)·5
    assert all(r["temperature"] == 0 and r["model"] == "judge" for r in srv.requests)


def test_peregrm_criteria_come_from_the_endpoint_and_bad_replies_are_errors(tmp_path):
    sample = EmpathySample(query="My dog died", analysis="a", response="r", memories=["has a dog named Rex"])
    with StubChatServer(reply_by_prompt) as srv:
        judge = EndpointJudge(ChatEndpoint(srv.url, "judge", api_key_env=None))
        assert judge.generate_criteria([sample]) == ["- be specific to the dog"]
        judge.generate_criteria([sample])
        assert sum(1 for r in srv.requests if r["max_tokens"] == 256) == 1  # cached per user and query
    with StubChatServer(lambda b, h: (200, {"content": "I refuse"}, {})) as srv:
        judge = EndpointJudge(ChatEndpoint(srv.url, "judge", api_key_env=None))
        with pytest.raises(ValueError, match="hold no score 1-5.*I refuse"):
            judge.score(SAMPLES[:1], dimensions=("resonation",))
