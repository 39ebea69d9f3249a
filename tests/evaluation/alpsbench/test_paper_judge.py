"""The paper's judges (official prompts read from a user's copy, our scoring) against a stub endpoint.

Expected scores are worked out by hand from the official definitions (penalty table, severity
multiplier, 0.5/0.5 blend, curators' parse and fallback); the matcher's algo score is the one
already checked against the official code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from flythinker.cli import main
from flythinker.evaluation.alpsbench.matching import judge_reviews_score_100, score_memory_match
from flythinker.evaluation.alpsbench.official_judges import (
    OfficialCodeError,
    OfficialPrompts,
    memory_judge_payload,
    parse_memory_review,
    parse_t4_reply,
)
from tests.evaluation.alpsbench._fakes import examples, read_jsonl, replicated
from tests.evaluation.alpsbench._official_fake import (
    MEMORY_SYSTEM,
    MEMORY_USER_PREFIX,
    t4_prompt,
    write_official_code,
)
from tests.stub_chat_server import StubChatServer

T1_REPLIES = {
    0: '{"pair_reviews": [{"error_type": "VALUE_DRIFT", "severity": 2}], '
    '"missing_reviews": [{"should_have_extracted": true, "severity": Infinity}], '
    '"extra_reviews": [{"hallucinated": false, "severity": 3}]}',
    1: 'Sure.\n```json\n{"pair_reviews": [{"error_type": "equivalent", "severity": 0}], '
    '"extra_reviews": [{"hallucinated": true, "severity": 3}]}\n```',
    2: "I cannot judge this.",
    3: "[1, 2]",
    4: '{"pair_reviews": [{"error_type": "overgeneral", "severity": 2.7}, {"error_type": "WEIRD"}], '
    '"missing_reviews": [{"should_have_extracted": "true", "severity": 3}]}',
    6: json.dumps({"missing_reviews": [{"should_have_extracted": True, "severity": 3}] * 10}),
}
T1_LLM = {0: 72.0, 1: 70.0, 4: 91.5, 6: 0.0}  # 100 − 12·1.5 − 10·1; 100 − 15·2; 100 − 3·1.5 − 4; clipped
A1_REPLIES = {
    0: '{"alignment": 0.3, "naturalness": 1, "honesty": 1, "personalization": 0.5, '
    '"overall_weighted_score": 0.6, "reasoning": "x"}',
    1: 'Here:\n```json\n{"alignment": 1.0, "naturalness": 1.0, "honesty": 1.0, "personalization": 1.0, '
    '"overall_weighted_score": 0.9}\n```',
    2: "no idea",
    4: '{"alignment": 0.8, "overall_weighted_score": 0.5}',
}
A5_REPLY = '{"emotional_grounding": 1, "fact_match": 0.5, "empathy_quality": 0.75, "reasoning": "r"}'


def _row_of(text: str) -> int:
    return int(re.search(r"ROW(\d+)", text).group(1))


def stub_reply(body, headers):
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    if system == MEMORY_SYSTEM:
        return 200, {"content": T1_REPLIES[_row_of(user)]}, {}
    if system == t4_prompt("ability1"):
        return 200, {"content": A1_REPLIES[_row_of(user)]}, {}
    if system == t4_prompt("ability5"):
        return 200, {"content": A5_REPLY}, {}
    return 400, {"error": f"unexpected system prompt {system[:40]!r}"}, {}


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def make_run(tmp_path: Path):
    """A dev-like split (task1 ×7, task4 ability1 ×5, ability5 ×2) and a run folder of predictions + logs."""
    ex = examples()
    data, run = tmp_path / "dev", tmp_path / "run"
    tracks = {"task1": 7, "task4_ability1": 5, "task4_ability5": 2}
    loaded = {}
    for track, n in tracks.items():
        td = replicated(ex[track], n)
        folder = data / ("task1" if track == "task1" else f"task4/{track.split('_')[1]}")
        _write_jsonl(folder / "model_input.jsonl", td.inputs)
        _write_jsonl(folder / "reference_output.jsonl", [td.references[r["benchmark_id"]] for r in td.inputs])
        loaded[track] = td
    preds, logs = [], []
    for k, inp in enumerate(loaded["task1"].inputs):
        gold = loaded["task1"].references[inp["benchmark_id"]]["gold"]["memory_items"]
        items = [dict(g) for g in gold[: max(1, len(gold) - 1)]]
        items.append({"memory_id": "x1", "type": "direct", "label": "Marker", "value": f"ROW{k}"})
        failed = k == 5
        preds.append({"benchmark_id": inp["benchmark_id"], "memory_items": [] if failed else items})
        logs.append({"benchmark_id": inp["benchmark_id"], "status": "failed" if failed else "ok"})
    _write_jsonl(run / "task1" / "predictions.jsonl", preds)
    _write_jsonl(run / "task1" / "log.jsonl", logs)
    for track in ("task4_ability1", "task4_ability5"):
        rows = [
            {
                "benchmark_id": inp["benchmark_id"],
                "answer": "" if (track, k) == ("task4_ability1", 3) else f"Answer ROW{k} ünïcode",
                "used_memory_fact": f"fact {k}",
            }
            for k, inp in enumerate(loaded[track].inputs)
        ]
        _write_jsonl(run / track / "predictions.jsonl", rows)
    return data, run, loaded, preds


def _score(data, run, out, code, url, extra=()):
    return main(
        [
            "alpsbench",
            "score",
            "--data",
            str(data),
            "--predictions",
            str(run),
            "--out",
            str(out),
            "--judge-endpoint",
            url,
            "--judge-model",
            "stub-judge",
            "--judge-api-key-env",
            "none",
            "--alpsbench-code",
            str(code),
            "--no-progress",
            *extra,
        ]
    )


def test_paper_judges_through_a_stub_endpoint_match_the_official_definitions(tmp_path):
    code = write_official_code(tmp_path / "AlpsBench")
    data, run, loaded, preds = make_run(tmp_path)
    with StubChatServer(stub_reply, max_requests=40) as srv:
        assert _score(data, run, tmp_path / "out", code, srv.url) == 0
        first = len(srv.requests)
        # the same scoring again (a resumed run): every reply comes from the cache
        assert (
            _score(
                data,
                run,
                tmp_path / "out2",
                code,
                srv.url,
                ["--judge-cache", str(tmp_path / "out" / "judge_cache")],
            )
            == 0
        )
        assert len(srv.requests) == first
    # 6 T1 rows (row 5 failed: never sent) + 4 ability1 rows (row 3 empty: never sent) + 2 ability5 rows
    assert first == 12
    t1_req = [r for r in srv.requests if r["messages"][0]["content"] == MEMORY_SYSTEM]
    assert all(
        r["temperature"] == 0 and r["max_tokens"] == 8000 and r["model"] == "stub-judge" for r in t1_req
    )
    user = t1_req[0]["messages"][1]["content"]
    assert user.startswith(MEMORY_USER_PREFIX)
    payload = json.loads(user[len(MEMORY_USER_PREFIX) :])
    assert set(payload) == {"evidence", "pairs", "missing", "extra", "output_schema"}
    t4_req = [r for r in srv.requests if r["messages"][0]["content"] == t4_prompt("ability1")]
    assert all(set(r) == {"model", "messages"} for r in t4_req)  # the curators send no decoding settings
    t4_user = t4_req[0]["messages"][1]["content"]
    assert "\\u00fc" in t4_user  # json.dumps(..., ensure_ascii=True), as the curators send it
    assert set(json.loads(t4_user)) == {"selected_memory", "model_answer", "used_memory_fact"}
    assert not any("ROW3" in r["messages"][1]["content"] for r in t4_req)

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    by = {(s["track"], s["method"]): s for s in summary["tracks"]}
    t1 = by[("task1", "model")]["paper_judge"]
    refs = loaded["task1"].references
    finals = []
    for k, p in enumerate(preds):
        if k in T1_LLM:
            gold = refs[p["benchmark_id"]]["gold"]["memory_items"]
            algo = score_memory_match(gold, p["memory_items"], "greedy")["algo_score_100"]
            finals.append(0.5 * algo + 0.5 * T1_LLM[k])
        elif k == 5:
            finals.append(0.0)
    assert t1["final_score_100"] == pytest.approx(sum(finals) / len(finals), abs=1e-4)
    assert t1["llm_score_100"] == pytest.approx((72 + 70 + 91.5 + 0 + 0) / 5, abs=1e-6)
    assert t1["rows_judge_failed"] == 2 and t1["rows_model_failed"] == 1 and t1["rows_scored"] == 5
    assert t1["rows_judged"] == 4
    a1 = by[("task4_ability1", "model")]["paper_judge"]
    assert a1["overall_weighted_score"] == pytest.approx((0.6 + 0.9 + 0 + 0 + 0.5) / 5)
    assert a1["critical_rule_violations"] == 1
    assert a1["rows_unparsed"] == 1 and a1["rows_model_failed"] == 1 and a1["rows_incomplete"] == 1
    a5 = by[("task4_ability5", "model")]["paper_judge"]
    assert (a5["emotional_grounding"], a5["fact_match"], a5["empathy_quality"]) == (1.0, 0.5, 0.75)
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "paper" in md.lower()


def test_review_parsing_and_penalties_follow_the_official_code():
    assert parse_memory_review('noise {"pair_reviews": []} noise') == {"pair_reviews": []}
    for bad in ("nothing", "[1]", '{"pair_reviews": "x"}', '{"extra_reviews": [1]}', "{broken}"):
        with pytest.raises(ValueError):
            parse_memory_review(bad)
    # severities: int() of the value, clipped to 0..3; anything int() refuses (text, NaN, ±Infinity) is 1.0
    sev = [(0, 0.5), (1, 1.0), (2, 1.5), (3, 2.0), (9, 2.0), (-4, 0.5), (2.9, 1.5), (True, 1.0), ("2", 1.5)]
    for s, mult in [*sev, ("2.0", 1.0)]:
        assert (
            judge_reviews_score_100({"pair_reviews": [{"error_type": "VALUE_DRIFT", "severity": s}]})
            == 100 - 12 * mult
        )
    for s in (float("inf"), float("-inf"), float("nan"), None, "high"):
        assert judge_reviews_score_100({"extra_reviews": [{"hallucinated": True, "severity": s}]}) == 85.0
    assert parse_t4_reply('x ```json\n{"overall_weighted_score": 1}\n``` y') == {"overall_weighted_score": 1}
    assert parse_t4_reply('``` {"a": 1} ```') == {"a": 1}
    assert parse_t4_reply("no json") is None and parse_t4_reply("[1]") is None


def test_payload_is_built_like_the_official_build_judge_payload():
    gold = [
        {"memory_id": "m1", "type": "direct", "label": "A/B", "value": "likes green tea", "confidence": 0.9},
        {"memory_id": "m2", "type": "direct", "label": "C", "value": "lives in Oslo"},
    ]
    pred = [
        {"memory_id": "p1", "type": "direct", "label": "A/B", "value": "likes tea", "confidence": 0.8},
        {"memory_id": "p2", "type": "indirect", "label": "Z", "value": "owns a cat"},
    ]
    payload, match = memory_judge_payload(gold, pred)
    assert [p["algo"]["gold_id"] for p in payload["pairs"]] == ["m1"]
    algo = payload["pairs"][0]["algo"]
    assert list(algo) == [
        "gold_id", "pred_id", "score", "label_sim", "value_sim", "type_match", "confidence_score",
        "confidence_diff", "confidence_penalty", "label_gold", "label_pred", "value_gold", "value_pred",
    ]  # fmt: skip
    assert algo["value_pred"] == "likes tea" and algo["score"] == match["pairs"][0][2]
    assert payload["missing"] == [gold[1]] and payload["extra"] == [pred[1]]
    assert payload["evidence"]["mode"] == "memory_only"
    assert set(payload["output_schema"]) == {"pair_reviews", "missing_reviews", "extra_reviews"}


def test_official_code_path_is_checked_with_a_clear_error(tmp_path, capsys):
    with pytest.raises(OfficialCodeError, match="0fd801c"):
        OfficialPrompts.load(tmp_path)
    code = write_official_code(tmp_path / "A")
    prompts = OfficialPrompts.load(code)
    assert prompts.memory_system == MEMORY_SYSTEM and prompts.memory_user_prefix == MEMORY_USER_PREFIX
    assert prompts.task4["ability2"] == t4_prompt("ability2_general")
    (code / "src/agents/task4_memory_grounded_qa/ability3/curator.py").write_text("X = 1\n")
    with pytest.raises(OfficialCodeError, match="ability3/curator.py.*JUDGE_PROMPT"):
        OfficialPrompts.load(code)
    data, run, _, _ = make_run(tmp_path)
    rc = _score(data, run, tmp_path / "out", tmp_path / "missing", "http://127.0.0.1:9/v1")
    assert rc != 0
    err = capsys.readouterr().err
    assert "--alpsbench-code" in err and len(err.strip().splitlines()) == 1
    assert not read_jsonl(run / "task1" / "log.jsonl")[5]["status"] == "ok"


def test_a_judge_that_never_answers_fails_the_command(tmp_path, capsys):
    code = write_official_code(tmp_path / "AlpsBench")
    data, run, _, _ = make_run(tmp_path)
    with StubChatServer(lambda b, h: (503, {"error": "down"}, {}), max_requests=40) as srv:
        rc = _score(data, run, tmp_path / "out", code, srv.url, ["--judge-max-retries", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and "task1/model (paper judge: no row scored)" in err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    t1 = next(s for s in summary["tracks"] if s["track"] == "task1")["paper_judge"]
    assert t1["rows_endpoint_error"] == 6 and t1["rows_model_failed"] == 1
    assert not list((tmp_path / "out" / "judge_cache").rglob("*.json"))  # failures are never cached


def test_the_papers_table_form_splits_ei_by_language(tmp_path):
    from flythinker.evaluation.alpsbench.report import summarize_track
    from flythinker.evaluation.alpsbench.report_md import language_of, paper_table, summary_markdown

    assert [language_of(b) for b in ("english_77", "chinese_3#1", "ability5_0", "x")] == [
        "english", "chinese", None, None,
    ]  # fmt: skip
    dims = ("emotional_grounding", "fact_match", "empathy_quality")
    rows = [
        {"benchmark_id": bid, "main_score": 0.0, "grounding_accuracy": 0.0, "used_memory_fact_match": 0.0,
         "response_present": 1.0, "paper_judge": {"status": "ok", **dict(zip(dims, v))}}
        for bid, v in (("english_1", (1, 1, 1)), ("english_2", (0, 0, 0)), ("chinese_1", (0.5, 0.5, 0.5)))
    ]  # fmt: skip
    ei = summarize_track("task4_ability5", "m", rows)
    base = {"method": "m", "num_rows": 4, "main_metric": "accuracy"}
    pa = {
        **base,
        "track": "task4_ability1",
        "main_score": 0.0,
        "paper_judge": {"overall_weighted_score": 0.57},
    }
    t3 = {**base, "track": "task3_d1000", "main_score": 0.25}
    columns, table = paper_table({"tracks": [ei, pa, t3]})
    assert columns == ["T1", "T2", "T3 d1000", "PA", "PF", "VRA", "CF", "EI", "EI chinese", "EI english"]
    row = table["m"]
    assert row["PA"] == pytest.approx(57.0) and row["T3 d1000"] == 25.0
    assert row["EI"] == pytest.approx(100 * 1.5 / 3) and row["EI english"] == pytest.approx(50.0)
    assert row["EI chinese"] == pytest.approx(50.0) and row.get("T1") is None
    md = summary_markdown({"split": "dev", "tracks": [ei, pa, t3]})
    assert "| m | – | – | 25.00 | 57.00 | – | – | – | 50.00 | 50.00 | 50.00 |" in md
