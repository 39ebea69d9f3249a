"""Greedy tokens served by vLLM equal flythinker's own teacher-forced forward (fp32, CPU).

One engine process per scheduling regime: uneven batch (engine core in its own process), chunked
prefill, prefix-cache hits, forced preemption. Each test fails if the per-request slot is not reset
for a new request or the reasoner state is not shifted by one position
(``FLYTHINKER_VLLM_FAULT=no_reset|no_shift`` shows it).
"""

from __future__ import annotations

import pytest
from conftest import LOGPROB_TOLERANCE, assert_matches_reference, random_prompt, run_engine

ENGINE = {"max_model_len": 1024}


@pytest.fixture(scope="module")
def uneven(tiny_dir, tmp_path_factory):
    """Two rounds of prompts of 1, 5, 17 and 40 tokens: the second round's requests get slots that
    the first round's requests used (stale bytes a new request must not read)."""
    rounds = [[random_prompt(n, seed=n + offset) for n in (1, 5, 17, 40)] for offset in (0, 1000)]
    spec = {"model": str(tiny_dir), "engine": ENGINE, "rounds": rounds, "max_tokens": 12, "logprobs": 5}
    return rounds, run_engine(tmp_path_factory.mktemp("uneven"), spec, multiprocess=True)


def test_uneven_batch_in_engine_process_is_exact(uneven, tiny_reference):
    rounds, result = uneven
    for prompts, outputs in zip(rounds, result["rounds"]):
        for prompt, output in zip(prompts, outputs):
            assert_matches_reference(tiny_reference, prompt, output)


def test_top_k_logprobs_within_tolerance(uneven, tiny_reference):
    rounds, result = uneven
    for prompt, output in zip(rounds[0], result["rounds"][0]):
        assert len(output["logprobs"][0]) >= 5
        assert_matches_reference(tiny_reference, prompt, output, logprob_tolerance=LOGPROB_TOLERANCE)


def test_chunked_prefill_long_prompts_are_exact(tiny_dir, tiny_reference, tmp_path):
    """Long prompts in 64-token chunks (the slot carries u across chunks), then new requests on reused slots."""
    rounds = [
        [random_prompt(n, seed=100 + n) for n in (600, 150, 3)],
        [random_prompt(n, seed=n) for n in (90, 2)],
    ]
    engine = dict(ENGINE, max_num_batched_tokens=64, enable_prefix_caching=False)
    spec = {"model": str(tiny_dir), "engine": engine, "rounds": rounds, "max_tokens": 8}
    result = run_engine(tmp_path, spec)
    for prompts, outputs in zip(rounds, result["rounds"]):
        for prompt, output in zip(prompts, outputs):
            assert_matches_reference(tiny_reference, prompt, output)


def test_prefix_cache_hits_are_exact(tiny_dir, tiny_reference, tmp_path):
    long = random_prompt(600, seed=600)
    shares_520 = long[:520] + random_prompt(80, seed=80)
    engine = dict(ENGINE, enable_prefix_caching=True, max_num_batched_tokens=128)
    spec = {"model": str(tiny_dir), "engine": engine, "rounds": [[long], [long, shares_520]], "max_tokens": 8}
    result = run_engine(tmp_path, spec)
    first, (again, partial) = result["rounds"][0][0], result["rounds"][1]
    assert first["num_cached_tokens"] == 0
    # Hybrid models cache in steps of the unified block size (256 tokens here): both hit 512 tokens.
    assert again["num_cached_tokens"] >= 256 and partial["num_cached_tokens"] >= 256
    assert partial["num_cached_tokens"] <= 520
    assert again["token_ids"] == first["token_ids"]
    for prompt, output in ((long, first), (long, again), (shares_520, partial)):
        assert_matches_reference(tiny_reference, prompt, output)


def test_forced_preemption_is_exact(tiny_dir, tiny_reference, tmp_path):
    prompts = [random_prompt(n, seed=200 + n) for n in (200, 230, 260, 180)]
    engine = dict(max_model_len=512, num_gpu_blocks_override=16, max_num_seqs=4)
    spec = {"model": str(tiny_dir), "engine": engine, "rounds": [prompts], "max_tokens": 96}
    result = run_engine(tmp_path, spec)
    assert result["counters"].get("vllm:num_preemptions", 0) > 0, result["counters"]
    for prompt, output in zip(prompts, result["rounds"][0]):
        assert_matches_reference(tiny_reference, prompt, output)
