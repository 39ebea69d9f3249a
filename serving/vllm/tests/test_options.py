"""Warm-start options (learned gate, reasoner centring, projections) are served exactly too:
flythinker's LatentFusion is used as is, with its weights loaded from ``fusion.*``."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_matches_reference, random_prompt, run_engine
from tiny import save_tiny_pair

OPTIONS = {
    "linear+channel+centre": dict(projection="linear", fusion_gate="channel", center_reasoner=True),
    "zero_linear+scalar": dict(projection="zero_linear", fusion_gate="scalar"),
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_warm_start_options_are_exact(name, tmp_path):
    from flythinker import FlyThinkerForCausalLM

    directory = save_tiny_pair(tmp_path / name, seed=3, **OPTIONS[name])
    reference = FlyThinkerForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    prompts = [random_prompt(n, seed=300 + n) for n in (1, 9, 70)]
    engine = {"max_model_len": 512, "max_num_batched_tokens": 32}
    result = run_engine(
        tmp_path, {"model": str(directory), "engine": engine, "rounds": [prompts], "max_tokens": 8}
    )
    for prompt, output in zip(prompts, result["rounds"][0]):
        assert_matches_reference(reference, prompt, output)


def test_reasoner_context_models_are_refused_with_a_clear_error():
    from flythinker_vllm.model import check_supported
    from tiny import tiny_llama_config

    from flythinker import FlyThinkerConfig

    config = FlyThinkerConfig(
        generator_config=tiny_llama_config(128),
        reasoner_config=tiny_llama_config(64, layers=1, intermediate_size=192),
        reasoner_context=True,
    )
    with pytest.raises(ValueError, match="reasoner_context=True.*not served yet"):
        check_supported(config)
