"""End to end on the examples split with the real SmolLM2-135M, and with a FlyThinker pair built from it.

Small budgets (short prompts, a few new tokens) keep this CI-sized: the point is that every track
runs through a real model, tokenizer and chat template, the files follow the contract, the judges
run, and a second run resumes without writing anything twice.
"""

from __future__ import annotations

import copy

import pytest

from flythinker.evaluation.alpsbench.contract import load_predictions
from flythinker.evaluation.alpsbench.pipeline import run_alpsbench
from flythinker.evaluation.alpsbench.runners import RunnerSettings
from tests.evaluation.alpsbench._fakes import EXAMPLES, examples, read_jsonl

TRACKS = ["task1", "task2", "task3_d100"] + [f"task4_ability{k}" for k in range(1, 6)]


@pytest.fixture(scope="module")
def smollm2():
    import torch

    from flythinker.modeling.smollm import load_smollm2

    torch.manual_seed(0)
    return load_smollm2()


def _check_files(out, tracks):
    loaded = examples()
    for track in tracks:
        ids = [r["benchmark_id"] for r in loaded[track].inputs]
        load_predictions(out / track / "predictions.jsonl", track, ids)  # the contract holds
        (entry,) = read_jsonl(out / track / "log.jsonl")
        assert entry["status"] in ("ok", "repaired", "retried", "failed")
    assert (out / "summary.md").is_file() and (out / "scores.jsonl").is_file()


@pytest.mark.slow
def test_all_tracks_with_smollm2_and_its_judges(smollm2, tmp_path):
    from flythinker.evaluation.alpsbench.lm import LocalLM

    model, tokenizer = smollm2
    lm = LocalLM(model, tokenizer, batch_size=4, max_prompt_tokens=512, show_progress=False, name="SmolLM2")
    settings = RunnerSettings(max_new_tokens=12, t4_max_new_tokens=12, max_retries=0, t3_answer_tokens=4)
    out = tmp_path / "run"
    summary = run_alpsbench(
        EXAMPLES,
        None,
        "all",
        out,
        lm=lm,
        settings=settings,
        baselines=("bm25",),
        judge_lm=lm,
        show_progress=False,
    )
    _check_files(out, TRACKS)
    by = {(s["track"], s["method"]): s for s in summary["tracks"]}
    assert {t for t, _ in by} == set(TRACKS)
    assert ("task3_d100", "bm25") in by and summary["task3_accuracy_by_level"]["bm25"] == {"100": 0.0}
    answered = 0
    for k in range(1, 5):  # a failed (empty / cut-off) answer is never judged
        s = by[(f"task4_ability{k}", "SmolLM2")]
        assert ("local_judge" in s) == (s["failed_rows"] == 0)
        judge = s.get("local_judge", {})
        assert all(0.0 <= v <= 1.0 for v in judge.values())
        answered += s["failed_rows"] == 0
    assert answered == 0  # 12 tokens cut every answer: all failed, none judged (the CLI default is 384)
    for track in ("task1", "task2"):  # the local match judge blends into local_judge_final_score_100
        m = by[(track, "SmolLM2")]["match_greedy"]
        assert 0.0 <= m["local_judge_score_100"] <= 100.0
        assert m["local_judge_final_score_100"] == pytest.approx(
            0.5 * m["algo_score_100"] + 0.5 * m["local_judge_score_100"], abs=1e-3
        )
    s5 = by[("task4_ability5", "SmolLM2")]
    if s5["failed_rows"] == 0:
        ei = s5["local_judge"]
        assert set(ei) == {"resonation", "expression", "reception", "ei"} and 1.0 <= ei["ei"] <= 5.0
    # a second run resumes: every row is already there, nothing is generated or written again
    before = {t: (out / t / "predictions.jsonl").read_text() for t in TRACKS}
    again = run_alpsbench(
        EXAMPLES, None, "all", out, lm=lm, settings=settings, baselines=(), show_progress=False
    )
    assert all(c["skipped"] == 1 for c in again["run_counts"].values())
    assert {t: (out / t / "predictions.jsonl").read_text() for t in TRACKS} == before


@pytest.mark.slow
def test_all_tracks_with_a_flythinker_pair(smollm2, tmp_path):
    from flythinker.evaluation.alpsbench.lm import LocalLM
    from flythinker.modeling.modeling_flythinker import FlyThinkerForCausalLM

    model, tokenizer = smollm2
    pair = FlyThinkerForCausalLM.from_components(
        generator=copy.deepcopy(model), reasoner=copy.deepcopy(model), fusion_lambda=0.5
    ).eval()
    lm = LocalLM(
        pair,
        tokenizer,
        batch_size=4,
        max_prompt_tokens=384,
        engine="flythinker",
        show_progress=False,
        name="FlyThinker(SmolLM2×2)",
    )
    settings = RunnerSettings(
        max_new_tokens=6, t4_max_new_tokens=6, max_retries=0, t3_answer_tokens=0, t3_protocol="rerank"
    )
    out = tmp_path / "pair"
    summary = run_alpsbench(
        EXAMPLES, None, "all", out, lm=lm, settings=settings, baselines=(), show_progress=False
    )
    _check_files(out, TRACKS)
    assert {s["track"] for s in summary["tracks"]} == set(TRACKS)
    assert all(s["method"].startswith("FlyThinker") for s in summary["tracks"])
