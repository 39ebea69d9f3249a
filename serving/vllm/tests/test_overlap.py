"""``FLYTHINKER_VLLM_OVERLAP=1``: the reasoner runs beside the generator in decode-only steps
(flythinker_vllm/overlap.py); the tokens stay flythinker's own. No speed is claimed from this machine.

On CPU the option is refused at start-up: vLLM's CPU GEMMs are not safe on two threads (the
SmolLM2-135M pair crashed with SIGSEGV in bench/bench_serving.py). The exactness test needs CUDA
(``make gpu-check`` runs it); the CPU refusal is tested here."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_matches_reference, random_prompt, run_engine

OVERLAP = {"FLYTHINKER_VLLM_OVERLAP": "1"}


def test_overlap_on_cpu_is_refused_at_start_up(tiny_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the refusal is for vLLM's CPU build")
    spec = {"model": str(tiny_dir), "engine": {}, "rounds": [[[1, 2, 3]]]}
    with pytest.raises(AssertionError, match="FLYTHINKER_VLLM_OVERLAP=1 needs a CUDA or ROCm GPU"):
        run_engine(tmp_path, spec, env=OVERLAP)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the overlapped step is refused on CPU (needs CUDA)"
)
def test_overlapped_decode_steps_are_exact(tiny_dir, tiny_reference, tmp_path):
    """Uneven prompts in 64-token chunks (mixed steps stay sequential), then decode-only steps that
    overlap; a second round reuses the first round's slots (a new request must not read them)."""
    rounds = [
        [random_prompt(n, seed=500 + n) for n in (1, 5, 17, 140)],
        [random_prompt(n, seed=700 + n) for n in (3, 90)],
    ]
    engine = {"max_model_len": 1024, "max_num_batched_tokens": 64, "enable_prefix_caching": False}
    spec = {"model": str(tiny_dir), "engine": engine, "rounds": rounds, "max_tokens": 12,
            "probe": "overlapped_steps"}  # fmt: skip
    result = run_engine(tmp_path, spec, env=OVERLAP)
    assert result["probe"] and result["probe"][0] > 0, result["probe"]  # the overlapped path ran
    for prompts, outputs in zip(rounds, result["rounds"]):
        for prompt, output in zip(prompts, outputs):
            assert_matches_reference(tiny_reference, prompt, output)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="off a GPU the overlap is refused before eagerness is checked"
)
def test_overlap_without_eager_is_refused(tiny_dir, tmp_path):
    spec = {"model": str(tiny_dir), "engine": {"enforce_eager": False}, "rounds": [[[1, 2, 3]]]}
    with pytest.raises(AssertionError, match="FLYTHINKER_VLLM_OVERLAP=1 needs --enforce-eager"):
        run_engine(tmp_path, spec, env=OVERLAP)
