"""bench/bench_kv_cache.py: its paired measurement compares the two caches on the same tokens, and
its table says what it measured."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from bench import bench_kv_cache as bk

from ..tiny_models import tiny_llama_config


def test_paired_steps_decode_both_caches_on_the_same_tokens_bit_for_bit():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(hidden=32)).eval()
    row = bk.paired_steps(model, batch=2, prompt=12, steps=6)
    assert row["logits_bit_equal"] is True
    assert (row["batch"], row["prompt"], row["steps"]) == (2, 12, 6)
    low, high = row["speedup_quartiles"]
    assert row["dynamic_ms"] > 0 and row["reserved_ms"] > 0 and low <= row["speedup"] <= high
    text = bk.markdown(
        {
            "device": "cpu",
            "versions": {"torch": "t", "transformers": "x"},
            "settings": {"threads": 1, "load_average_at_start": [0.1, 0, 0], "command": "c"},
            "results": [row, {**row, "logits_bit_equal": False}],
        }
    )
    assert "| 2 | 12 | 6 |" in text and "| yes |" in text and "| **no** |" in text
