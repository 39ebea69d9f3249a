"""The model under test behind an OpenAI-compatible server (vllm serve), against a stub on 127.0.0.1."""

from __future__ import annotations

import pytest

from flythinker.evaluation.alpsbench.endpoint_lm import EndpointLM
from flythinker.evaluation.alpsbench.pipeline import run_alpsbench
from flythinker.evaluation.alpsbench.runners import RunnerSettings
from flythinker.rewards.endpoint import ChatEndpoint
from tests.evaluation.alpsbench._fakes import EXAMPLES, examples, read_jsonl
from tests.stub_chat_server import StubChatServer
from tests.word_models import build_word_tokenizer

T1_ITEM = '{"label": "Preferences/Food", "value": "likes tea", "type": "direct", "confidence": 0.9}'


def _gold_t3():
    td = examples()["task3_d100"]
    return td.references[td.inputs[0]["benchmark_id"]]["gold"]["selected_memory_id"]


def server_reply(gold):
    def reply(body, headers):
        msgs = body["messages"]
        prefill = msgs[-1]["content"] if msgs[-1]["role"] == "assistant" else ""
        system = msgs[0]["content"]
        if "selected_memory_id" in system:
            full = '{"selected_memory_id": "' + gold + '"}'
        elif "used_memory_fact" in system:
            full = '{"answer": "Take the scenic road.", "used_memory_fact": "owns a Tesla"}'
        else:
            full = '{"memory_items": [' + T1_ITEM + "]}"
        if prefill:
            assert full.startswith(prefill) and body["continue_final_message"] is True
            assert body["add_generation_prompt"] is False
            return 200, {"content": full[len(prefill) :]}, {}
        return 200, {"content": full}, {}

    return reply


@pytest.mark.parametrize("prefill", [True, False])
def test_a_served_model_runs_t1_t4_and_the_whole_pool(tmp_path, prefill):
    gold = _gold_t3()
    with StubChatServer(server_reply(gold), max_requests=50) as srv:
        ep = ChatEndpoint(srv.url, "served-model", api_key_env=None, cache_dir=tmp_path / "cache")
        lm = EndpointLM(ep, build_word_tokenizer(), max_prompt_tokens=100_000, prefill=prefill)
        summary = run_alpsbench(
            EXAMPLES, None, "task1,task3_d100,task4_ability1", tmp_path / "o", lm=lm,
            settings=RunnerSettings(t3_protocol="pool", t3_answer_tokens=0), baselines=(), show_progress=False,
        )  # fmt: skip
    by = {(s["track"], s["method"]): s for s in summary["tracks"]}
    assert by[("task3_d100", "served-model + whole-pool")]["main_score"] == 1.0
    assert by[("task4_ability1", "served-model")]["failed_rows"] == 0
    (t4,) = read_jsonl(tmp_path / "o" / "task4_ability1" / "predictions.jsonl")
    assert t4["answer"] == "Take the scenic road." and t4["used_memory_fact"] == "owns a Tesla"
    (t1,) = read_jsonl(tmp_path / "o" / "task1" / "predictions.jsonl")
    assert t1["memory_items"][0]["value"] == "likes tea"
    assert all(r["temperature"] == 0 and r["model"] == "served-model" for r in srv.requests)
    t4_req = [r for r in srv.requests if "used_memory_fact" in r["messages"][0]["content"]]
    assert t4_req[0]["max_tokens"] == 384
    assert ("continue_final_message" in t4_req[0]) == prefill
    assert summary["manifest"]["engine"] == "endpoint" and summary["manifest"]["model_endpoint"].startswith(
        srv.url
    )


def test_the_reranking_protocol_needs_a_local_lm(tmp_path):
    lm = EndpointLM(ChatEndpoint("http://127.0.0.1:9/v1", "m", api_key_env=None), build_word_tokenizer())
    with pytest.raises(ValueError, match="--t3-protocol pool"):
        run_alpsbench(EXAMPLES, None, "task3_d100", tmp_path / "o", lm=lm, baselines=(), show_progress=False)


def test_the_cli_runs_a_served_model(tmp_path, capsys):
    from flythinker.cli import main

    build_word_tokenizer().save_pretrained(tmp_path / "tok")
    base = ["alpsbench", "run", "--data", str(EXAMPLES), "--model", "served-model", "--no-progress",
            "--tokenizer", str(tmp_path / "tok"), "--baselines", "none"]  # fmt: skip
    with StubChatServer(server_reply(_gold_t3()), max_requests=20) as srv:
        refused = main([*base, "--model-endpoint", srv.url, "--out", str(tmp_path / "a")])
        assert refused != 0 and "--t3-protocol pool" in capsys.readouterr().err
        assert not srv.requests
        argv = [
            *base,
            "--model-endpoint",
            srv.url,
            "--t3-protocol",
            "pool",
            "--track",
            "task3_d100,task4_ability1",
        ]
        assert main([*argv, "--out", str(tmp_path / "o")]) == 0
    (t4,) = read_jsonl(tmp_path / "o" / "task4_ability1" / "predictions.jsonl")
    assert t4["answer"] == "Take the scenic road."
    assert list((tmp_path / "o" / "model_cache").rglob("*.json"))  # replies cached for a resumed run
