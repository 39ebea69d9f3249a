"""Options the plugin cannot serve exactly are refused at engine start, with one clear message each
(flythinker_vllm.limits); an ordinary engine still starts.

Before the refusals existed, speculative decoding and ``--enable-prompt-embeds`` were accepted and
CUDA graphs were not checked: the config tests below then fail (no ValueError is raised).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run_engine
from flythinker_vllm.limits import refusals

NGRAM = {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3, "prompt_lookup_min": 1}


def fake_config(speculative=None, prompt_embeds=False, enforce_eager=False, cudagraph_mode=None, level="O2"):
    """The fields ``refusals`` reads, as vLLM's VllmConfig holds them."""
    mode = None if cudagraph_mode is None else SimpleNamespace(name=cudagraph_mode)
    return SimpleNamespace(
        optimization_level=SimpleNamespace(name=level),
        speculative_config=speculative,
        model_config=SimpleNamespace(enable_prompt_embeds=prompt_embeds, enforce_eager=enforce_eager),
        compilation_config=SimpleNamespace(cudagraph_mode=mode),
    )


# ------------------------------------------------------------------------------- the decision (pure)
@pytest.mark.parametrize(
    ("config", "device", "refused"),
    [
        (fake_config(), "cpu", []),
        (fake_config(enforce_eager=True), "cuda", []),
        (fake_config(cudagraph_mode="NONE"), "cuda", []),
        (fake_config(), "cuda", ["CUDA graphs"]),  # vLLM's GPU default: graphs on
        (fake_config(level="O0"), "cuda", []),  # -O0: its default cudagraph_mode is NONE
        (fake_config(level="O0", cudagraph_mode="PIECEWISE"), "cuda", ["CUDA graphs"]),
        (fake_config(cudagraph_mode="PIECEWISE"), "cuda", ["CUDA graphs"]),
        (fake_config(cudagraph_mode="FULL_AND_PIECEWISE"), "rocm", ["CUDA graphs"]),
        (fake_config(cudagraph_mode="FULL_AND_PIECEWISE"), "cpu", []),  # vLLM captures none on CPU
        (fake_config(speculative=SimpleNamespace(method="ngram")), "cpu", ["speculative decoding (ngram)"]),
        (fake_config(speculative=SimpleNamespace(method="eagle"), enforce_eager=True), "cuda", ["(eagle)"]),
        (fake_config(prompt_embeds=True), "cpu", ["--enable-prompt-embeds"]),
        (
            fake_config(SimpleNamespace(method="ngram"), True),
            "cuda",
            ["speculative", "prompt-embeds", "graphs"],
        ),
    ],
)
def test_refusal_decision(config, device, refused):
    problems = refusals(config, device)
    assert len(problems) == len(refused), problems
    for problem, words in zip(problems, refused):
        assert problem.startswith("flythinker-vllm: ") and words in problem
        assert "\n" not in problem


def test_the_overlapped_step_is_refused_off_a_gpu():
    (overlap,) = refusals(fake_config(), "cpu", overlap=True)
    assert (
        overlap.startswith("flythinker-vllm: FLYTHINKER_VLLM_OVERLAP=1 needs a CUDA or ROCm GPU")
        and "\n" not in overlap
    )
    assert "refused on cpu" in overlap and "SIGSEGV" in overlap
    assert refusals(fake_config(enforce_eager=True), "cuda", overlap=True) == []
    assert refusals(fake_config(), "cpu", overlap=False) == []


def test_refusals_say_what_to_do():
    (graphs,) = refusals(fake_config(), "cuda")
    assert "--enforce-eager" in graphs and "cudagraph_mode=NONE" in graphs
    (speculative,) = refusals(fake_config(speculative=SimpleNamespace(method="ngram")), "cpu")
    assert "--speculative-config" in speculative


# ----------------------------------------------------------------- vLLM's own config building refuses
def engine_config(tiny_dir, **options):
    from vllm.engine.arg_utils import EngineArgs

    args = EngineArgs(
        model=str(tiny_dir), dtype="float32", skip_tokenizer_init=True, max_model_len=256, **options
    )
    return args.create_engine_config()


def test_engine_config_refuses_speculative_decoding(tiny_dir):
    with pytest.raises(
        ValueError, match="flythinker-vllm: speculative decoding \\(ngram\\) is not supported"
    ):
        engine_config(tiny_dir, speculative_config=NGRAM)


def test_engine_config_refuses_prompt_embeds(tiny_dir):
    with pytest.raises(ValueError, match="flythinker-vllm: --enable-prompt-embeds"):
        engine_config(tiny_dir, enable_prompt_embeds=True)


def test_engine_config_accepts_ordinary_options(tiny_dir):
    config = engine_config(tiny_dir, enable_prefix_caching=True)
    assert config.speculative_config is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (vLLM's CUDA platform)")
def test_engine_config_refuses_cuda_graphs_on_gpu(tiny_dir):
    with pytest.raises(ValueError, match="flythinker-vllm: CUDA graphs are not supported yet"):
        engine_config(tiny_dir)
    assert engine_config(tiny_dir, enforce_eager=True).model_config.enforce_eager
    assert engine_config(tiny_dir, compilation_config={"cudagraph_mode": "NONE"}) is not None


# ------------------------------------------------------------------------- end to end, one engine each
def test_offline_llm_with_speculative_decoding_fails_at_start(tiny_dir, tmp_path):
    spec = {"model": str(tiny_dir), "engine": {"speculative_config": NGRAM}, "rounds": [[[1, 2, 3]]]}
    with pytest.raises(AssertionError) as failure:
        run_engine(tmp_path, spec, multiprocess=True)
    assert "flythinker-vllm: speculative decoding (ngram) is not supported" in str(failure.value)


def test_vllm_serve_refuses_prompt_embeds(tiny_dir):
    """The server exits at start-up with the message, before it loads anything."""
    command = [str(Path(sys.executable).parent / "vllm"), "serve", str(tiny_dir), "--dtype", "float32",
               "--skip-tokenizer-init", "--enable-prompt-embeds", "--host", "127.0.0.1", "--port", "0"]  # fmt: skip
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0
    assert "flythinker-vllm: --enable-prompt-embeds" in result.stdout + result.stderr
