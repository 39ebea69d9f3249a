"""Fixtures of the plugin's tests: tiny save_pretrained directories, the engine driver, the reference.

Every engine runs in its own process (``driver.py``); the reference is flythinker's own
teacher-forced forward, ``FlyThinkerForCausalLM.from_pretrained(DIR)(ids).logits``, in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from tiny import save_tiny_pair  # noqa: E402

# fp32 log-probabilities of vLLM and of flythinker's forward differ by float rounding only
# (different attention/RMSNorm kernels); 1e-4 is ~10x the largest difference measured (1.9e-5).
LOGPROB_TOLERANCE = 1e-4
ENGINE_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_pair(tmp_path_factory.mktemp("tiny") / "flythinker")


@pytest.fixture(scope="session")
def tiny_reference(tiny_dir):
    from flythinker import FlyThinkerForCausalLM

    return FlyThinkerForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()


def random_prompt(length: int, seed: int, vocab: int = 384) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (length,), generator=generator).tolist()


def run_engine(
    tmp_path: Path, spec: dict, multiprocess: bool = False, name: str = "engine", env: dict | None = None
) -> dict:
    """Run ``driver.py`` on ``spec`` in a fresh process; the engine core runs in a further process
    when ``multiprocess`` (vLLM's default), inside the driver otherwise. ``env`` adds variables."""
    spec_path, out_path = tmp_path / f"{name}.spec.json", tmp_path / f"{name}.out.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, **(env or {}))
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if multiprocess else "0"
    result = subprocess.run(
        [sys.executable, str(HERE / "driver.py"), str(spec_path), str(out_path)],
        capture_output=True,
        text=True,
        timeout=ENGINE_TIMEOUT_S,
        env=env,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"engine run failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
        )
    return json.loads(out_path.read_text())


@torch.no_grad()
def assert_matches_reference(
    model, prompt: list[int], output: dict, logprob_tolerance: float | None = None
) -> None:
    """vLLM's greedy ids == argmax of flythinker's teacher-forced logits at every generated step,
    and (optionally) vLLM's top-k logprobs == log_softmax of those logits within the tolerance."""
    generated = output["token_ids"]
    assert generated, "the engine generated nothing"
    ids = torch.tensor([prompt + generated])
    logits = model(ids).logits[0, len(prompt) - 1 : -1].double()
    want = logits.argmax(-1).tolist()
    assert generated == want, f"prompt length {len(prompt)}: vLLM {generated} != flythinker {want}"
    if logprob_tolerance is not None:
        assert len(output["logprobs"]) == len(generated)
        reference = torch.log_softmax(logits, dim=-1)
        for step, top in enumerate(output["logprobs"]):
            assert len(top) >= 2
            for token, value in top.items():
                error = abs(value - reference[step, int(token)].item())
                assert error <= logprob_tolerance, f"step {step} token {token}: |Δ logprob| = {error:.2e}"
