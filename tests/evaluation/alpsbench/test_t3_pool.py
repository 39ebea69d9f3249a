"""The paper's T3 protocol: the LM reads the whole pool, chunked to its context when it must be."""

from __future__ import annotations

import re

import pytest

from flythinker.evaluation.alpsbench.data import model_view
from flythinker.evaluation.alpsbench.pipeline import run_alpsbench
from flythinker.evaluation.alpsbench.runners import RunnerSettings
from flythinker.evaluation.alpsbench.t3_pool import POOL_PREFILL, WholePoolSelector, parse_pick
from tests.evaluation.alpsbench._fakes import EXAMPLES, FakeLM, examples


def _gold():
    td = examples()["task3_d100"]
    inp = td.inputs[0]
    return td, model_view(td.track, inp), td.references[inp["benchmark_id"]]["gold"]["selected_memory_id"]


def oracle(gold_id):
    """Names the gold id when its chunk holds it, else the chunk's first id."""

    def respond(prompt):
        ids = re.findall(r"^\[([^\]]+)\] ", prompt, re.M)
        assert prompt.endswith(POOL_PREFILL) and ids
        return (gold_id if gold_id in ids else ids[0]) + '"}'

    return respond


def test_the_whole_pool_fits_one_prompt():
    td, view, gold = _gold()
    lm = FakeLM(respond=oracle(gold))  # 100,000 "tokens": one chunk
    (res,) = WholePoolSelector(lm).predict_many([view])
    assert res["selected_memory_id"] == gold and "in 1 chunk(s) over 1 round(s)" in res["reason"]
    assert len(view["candidate_memories"]) == 101  # the gold memory and 100 distractors
    assert all(f"[{c['memory_id']}]" in lm.prompts[0] for c in view["candidate_memories"])


def test_a_pool_beyond_the_context_is_chunked_and_every_candidate_is_read():
    td, view, gold = _gold()
    lm = FakeLM(respond=oracle(gold), max_prompt_tokens=1500)
    sel = WholePoolSelector(lm)
    chunks = sel.chunks(view["query"], view["candidate_memories"])
    n = len(view["candidate_memories"])
    assert len(chunks) > 2 and sorted(i for ch in chunks for i in ch) == list(range(n))
    (res,) = sel.predict_many([view])
    assert res["selected_memory_id"] == gold
    rounds = [int(x) for x in re.search(r"round\(s\) \[([\d, ]+)\]", res["reason"]).group(1).split(",")]
    assert rounds[0] == len(chunks) and rounds[-1] == 1 and len(rounds) >= 2
    assert max(len(p) for p in lm.prompts) <= 1500  # no prompt past the budget


def test_unusable_picks_fail_the_row_and_ids_are_read_leniently():
    assert parse_pick(' m7"}', ["m7", "m8"]) == "m7"
    assert parse_pick('x {"selected_memory_id": "[M8]"}', ["m7", "m8"]) == "m8"
    assert parse_pick("nothing", ["m7"]) is None
    td, view, gold = _gold()
    (res,) = WholePoolSelector(FakeLM(respond=lambda p: 'zzz"}')).predict_many([view])
    assert res["selected_memory_id"] == "" and "1 unusable pick(s)" in res["reason"]
    with pytest.raises(ValueError, match="one T3 candidate alone does not fit"):
        WholePoolSelector(FakeLM(max_prompt_tokens=300)).chunks(view["query"], view["candidate_memories"])


def test_both_protocols_are_run_and_reported(tmp_path):
    td, view, gold = _gold()
    lm = FakeLM(respond=oracle(gold), pick=lambda p: 1, max_prompt_tokens=2000)
    summary = run_alpsbench(
        EXAMPLES, None, "task3_d100", tmp_path / "o", lm=lm,
        settings=RunnerSettings(t3_answer_tokens=0), baselines=(), show_progress=False,
    )  # fmt: skip
    by = {s["method"]: s for s in summary["tracks"]}
    assert by["fake-lm + whole-pool"]["main_score"] == 1.0
    assert "fake-lm + lm-rerank(bm25, top-5)" in by  # the re-ranking protocol beside it
    assert (tmp_path / "o" / "task3_d100" / "whole_pool" / "predictions.jsonl").is_file()
    md = (tmp_path / "o" / "summary.md").read_text()
    assert "| fake-lm + whole-pool | – | – | 100.00 |" in md
