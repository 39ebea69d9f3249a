"""The real pair: SmolLM2-135M as generator and reasoner, written by ``save_pretrained`` and served
unchanged, by the offline engine and by ``vllm serve`` on 127.0.0.1 (one /v1/completions request)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import assert_matches_reference, run_engine

pytestmark = pytest.mark.slow

TEXTS = ["Write one sentence about the sea.", "Hello", "The capital of France is"]
SERVER_START_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def smollm2_pair(tmp_path_factory):
    """(directory, model, tokenizer): FlyThinker(SmolLM2, SmolLM2) saved with its tokenizer."""
    from transformers import AutoTokenizer

    from flythinker import FlyThinkerForCausalLM
    from flythinker.modeling.smollm import fix_end_of_turn, smollm2_path

    source = smollm2_path()
    model = FlyThinkerForCausalLM.from_components(source, source, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    fix_end_of_turn(tokenizer)
    directory = tmp_path_factory.mktemp("smollm2") / "flythinker-smollm2"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory, model, tokenizer


def test_smollm2_pair_saved_by_save_pretrained_is_exact(smollm2_pair, tmp_path):
    directory, model, tokenizer = smollm2_pair
    prompts = [tokenizer(text).input_ids for text in TEXTS]
    spec = {"model": str(directory), "engine": {"max_model_len": 512}, "rounds": [prompts], "max_tokens": 8}
    result = run_engine(tmp_path, spec)
    for prompt, output in zip(prompts, result["rounds"][0]):
        assert_matches_reference(model, prompt, output)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict, timeout: float) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def test_vllm_serve_answers_completions(smollm2_pair, tmp_path):
    directory, model, tokenizer = smollm2_pair
    port = _free_port()
    command = [
        str(Path(sys.executable).parent / "vllm"), "serve", str(directory),
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "512",
    ]  # fmt: skip
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            assert server.poll() is None, (
                f"vllm serve exited: {(tmp_path / 'server.log').read_text()[-4000:]}"
            )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "vllm serve did not become healthy in time"
                time.sleep(1.0)
        body = {
            "model": str(directory), "prompt": TEXTS[0], "max_tokens": 8, "temperature": 0.0,
            "ignore_eos": True, "return_token_ids": True,
        }  # fmt: skip
        reply = _post(f"http://127.0.0.1:{port}/v1/completions", body, timeout=120)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    choice = reply["choices"][0]
    assert reply["usage"]["completion_tokens"] == 8
    assert choice["text"] == tokenizer.decode(choice["token_ids"])
    prompt = tokenizer(TEXTS[0]).input_ids
    assert_matches_reference(model, prompt, {"token_ids": choice["token_ids"]})
