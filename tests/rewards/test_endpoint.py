"""The one API-judge client (flythinker.rewards.endpoint) against a stub server on 127.0.0.1."""

from __future__ import annotations

import pytest

from flythinker.rewards.endpoint import ChatEndpoint, EndpointError, EndpointFatalError, chat_url
from tests.stub_chat_server import StubChatServer

MSG = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]


def ok(content="fine"):
    return lambda body, headers: (200, {"content": content}, {})


def test_request_shape_key_and_url(monkeypatch, tmp_path):
    monkeypatch.setenv("STUB_KEY", "sk-test")
    with StubChatServer(ok("hello")) as srv:
        ep = ChatEndpoint(srv.url, "judge-x", api_key_env="STUB_KEY", cache_dir=None)
        assert ep.complete(MSG, temperature=0, max_tokens=8000) == "hello"
    assert srv.requests == [{"model": "judge-x", "messages": MSG, "temperature": 0, "max_tokens": 8000}]
    assert srv.headers[0]["Authorization"] == "Bearer sk-test"
    assert chat_url("http://h/v1/") == "http://h/v1/chat/completions"
    assert chat_url("http://h/x/chat/completions") == "http://h/x/chat/completions"


def test_missing_key_and_bad_settings_are_refused(monkeypatch):
    monkeypatch.delenv("NOPE_KEY", raising=False)
    with pytest.raises(ValueError, match=r"\$NOPE_KEY.*--judge-api-key-env none"):
        ChatEndpoint("http://127.0.0.1:9/v1", "m", api_key_env="NOPE_KEY")
    with pytest.raises(ValueError, match="http"):
        ChatEndpoint("127.0.0.1:9/v1", "m", api_key_env=None)
    with pytest.raises(ValueError, match="concurrency"):
        ChatEndpoint("http://127.0.0.1:9/v1", "m", api_key_env=None, concurrency=0)


def test_retries_with_backoff_on_429_500_and_malformed_bodies():
    script = [
        (429, {"error": "slow down"}, {"Retry-After": "7"}),
        (500, {"error": "boom"}, {}),
        (200, "this is not json", {}),
        (200, {"choices": []}, {}),
        (200, {"content": "finally"}, {}),
    ]
    with StubChatServer(lambda body, headers: script.pop(0)) as srv:
        slept: list[float] = []
        ep = ChatEndpoint(srv.url, "m", api_key_env=None, max_retries=5, backoff_s=0.5, sleep=slept.append)
        assert ep.complete(MSG) == "finally"
    assert len(srv.requests) == 5
    assert slept == [7.0, 1.0, 2.0, 4.0]  # Retry-After honoured, then 0.5·2^attempt


def test_gives_up_after_max_retries_and_fatal_statuses_stop():
    with StubChatServer(lambda b, h: (503, {"error": "down"}, {})) as srv:
        ep = ChatEndpoint(srv.url, "m", api_key_env=None, max_retries=2, sleep=lambda s: None)
        got = ep.complete_many([(MSG, {}), (MSG, {"temperature": 0})])
        assert all(isinstance(g, EndpointError) and "gave up after 3 tries" in str(g) for g in got)
        assert len(srv.requests) == 6
    with StubChatServer(lambda b, h: (401, {"error": "bad key"}, {})) as srv:
        ep = ChatEndpoint(srv.url, "m", api_key_env=None, max_retries=5, sleep=lambda s: None)
        with pytest.raises(EndpointFatalError, match="HTTP 401.*bad key"):
            ep.complete_many([(MSG, {})])
        assert len(srv.requests) == 1  # never retried


def test_cache_means_a_resumed_run_never_pays_twice(tmp_path):
    def reply(body, headers):
        return 200, {"content": "r:" + body["messages"][1]["content"]}, {}

    reqs = [
        ([{"role": "user", "content": str(k)}, {"role": "user", "content": str(k)}], {}) for k in range(6)
    ]
    with StubChatServer(reply) as srv:
        first = ChatEndpoint(srv.url, "m", api_key_env=None, cache_dir=tmp_path / "cache")
        assert first.complete_many(reqs) == [f"r:{k}" for k in range(6)]
        assert first.requests_sent == 6
        again = ChatEndpoint(srv.url, "m", api_key_env=None, cache_dir=tmp_path / "cache")  # a new process
        assert again.complete_many(reqs) == [f"r:{k}" for k in range(6)]
        assert again.requests_sent == 0 and again.cache_hits == 6
        other = ChatEndpoint(srv.url, "another-model", api_key_env=None, cache_dir=tmp_path / "cache")
        other.complete(reqs[0][0])
        assert other.requests_sent == 1  # the model name is part of the key
    assert len(srv.requests) == 7


def test_concurrency_is_bounded_and_order_kept():
    def reply(body, headers):
        return 200, {"content": body["messages"][0]["content"]}, {}

    with StubChatServer(reply, delay_s=0.05) as srv:
        ep = ChatEndpoint(srv.url, "m", api_key_env=None, concurrency=3)
        reqs = [([{"role": "user", "content": f"q{k}"}], {}) for k in range(12)]
        assert ep.complete_many(reqs) == [f"q{k}" for k in range(12)]
    assert 2 <= srv.max_in_flight <= 3
