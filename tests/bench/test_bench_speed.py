"""bench/speed.py (issue 12's one command) and bench_decode's goal table: the pieces that decide what
the results files say."""

from __future__ import annotations

import pytest

from bench import bench_decode as bd
from bench import speed


def test_idle_fraction_is_a_share_of_time():
    idle = speed.idle_fraction(0.2)
    assert idle is None or 0.0 <= idle <= 1.0


def test_section_copies_one_table_from_its_heading(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("# t\n\nAgainst the floor, paired:\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n* note\n")
    assert speed._section(md, "Against the floor") == [
        "Against the floor, paired:",
        "",
        "| a | b |",
        "|---|---|",
        "| 1 | 2 |",
    ]
    assert "not written" in speed._section(tmp_path / "missing.md", "x")[0]


def test_two_prefill_bound_is_generate_with_sequential_prefill():
    """generate: 0.25 s to the first token, 4.25 s in all (4.0 s decoding); sequential's two prefills
    take 0.5 s, so at generate's decode speed FlyThinker ends at 4.5 s: 4.25 / 4.5."""
    hf = [{"total_s": 4.25, "ttft_s": 0.25}, {"total_s": 2.0, "ttft_s": 1.0}]
    seq = [{"total_s": 9.0, "ttft_s": 0.5}, {"total_s": 9.0, "ttft_s": 1.0}]
    assert bd.two_prefill_bounds(hf, seq) == pytest.approx([4.25 / 4.5, 1.0])
    with pytest.raises(ValueError):
        bd.two_prefill_bounds(hf, seq[:1])


def _row(**ratios):
    return {"ttft_s": 1.0, "per_token_s": 0.1, "tokens_per_s": 10.0, "end_to_end_tokens_per_s": 9.0, **ratios}


@pytest.mark.parametrize("e2e, met", [(0.96, True), (0.94, False)])
def test_goal_rows_check_each_goal_against_its_threshold(e2e, met):
    results = {
        "decode, 128-token prompt, 64 new tokens, batch 1": {
            "processes": _row(
                end_to_end_vs_hf_generate=e2e,
                ttft_ratio_vs_sequential=1.01,
                tokens_equal_sequential=True,
                two_prefill_bound_vs_hf_generate=0.9449,
            )
        },
        "decode, 128-token prompt, 64 new tokens, batch 8": {
            "processes": _row(end_to_end_vs_hf_generate=0.9, tokens_equal_sequential=False)
        },
    }
    rows = bd.goal_rows(results)
    goals = {g["goal"]: g["met"] for g in rows}
    assert [g["measured"] for g in rows if g["goal"].startswith("end-to-end")] == [f"{e2e:.3f}×"]
    (e2e_goal,) = [g for g in goals if g.startswith("end-to-end")]
    assert goals[e2e_goal] is met
    (bound,) = [g for g in rows if "reachable" in g["goal"]]
    assert bound["measured"] == "0.945×" and bound["met"] is False  # 0.9449 < 0.95
    (ttft_goal,) = [g for g in goals if g.startswith("TTFT")]
    assert goals[ttft_goal] is False  # 1.01x sequential is not <= 1
    (b8,) = [g for g in goals if g.startswith("batch 8")]
    assert goals[b8] is True  # 0.9 >= 0.9
    assert [met for g, met in goals.items() if g.startswith("exact tokens")] == [True, False]
    text = bd.markdown(
        {
            "device": "cpu",
            "versions": {"torch": "t", "transformers": "x"},
            "settings": {
                "threads_available": 2,
                "repeats": 1,
                "ttft_repeats": 1,
                "baseline_threads": 2,
                "thread_split_generator_reasoner": [1, 1],
                "load_average_at_start": [0.1, 0, 0],
                "load_average_at_end": [1, 0, 0],
            },
            "results": results,
            "goals": bd.goal_rows(results),
        }
    )
    assert "| goal (issue 12) | measured | met |" in text and "quiet before the run" in text
