"""``--engine vllm`` without vLLM: the refusals, and the wrapper's plumbing against a stand-in engine.

The stand-in ``vllm`` module (installed into ``sys.modules`` for one test) decodes each token-id
prompt greedily with transformers' ``generate`` on the saved tiny model, stopping at the given stop
ids as vLLM does (the stop id kept in ``token_ids``). So a run through :class:`VLLMLM` must give what
:class:`LocalLM` gives row for row, and the engine must have been handed LocalLM's prompt ids. The
real engine is compared with the local engines in serving/vllm/tests/test_alpsbench_vllm.py.
"""

from __future__ import annotations

import os
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from flythinker.cli import main
from flythinker.evaluation.alpsbench.lm import LocalLM
from flythinker.evaluation.alpsbench.manifest import RunSettingsError
from flythinker.evaluation.alpsbench.pipeline import run_alpsbench
from flythinker.evaluation.alpsbench.runners import RunnerSettings
from tests.evaluation.alpsbench._fakes import EXAMPLES, read_jsonl
from tests.word_models import tiny_llama

TRACKS = "task1,task2,task3_d100,task4_ability1,task4_ability3"


class StandInLLM:
    """What VLLMLM uses of ``vllm.LLM``: the constructor, ``generate`` on token-id prompts, shutdown."""

    def __init__(self, model: str, **options) -> None:
        from transformers import AutoModelForCausalLM

        self.options, self.calls, self.shut_down = options, [], False
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        context = options.get("max_model_len", self.model.config.max_position_embeddings)
        self.llm_engine = SimpleNamespace(
            model_config=SimpleNamespace(max_model_len=context),
            engine_core=SimpleNamespace(shutdown=self._shutdown),
        )
        STARTED.append(self)

    def _shutdown(self) -> None:
        self.shut_down = True

    @torch.no_grad()
    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append(([list(p["prompt_token_ids"]) for p in prompts], params))
        outputs = []
        for p in prompts:
            ids = torch.tensor([p["prompt_token_ids"]])
            new = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=params.max_tokens,
                do_sample=False, eos_token_id=params.stop_token_ids, pad_token_id=0,
            )[0, ids.shape[1] :].tolist()  # fmt: skip
            stops = [k for k, t in enumerate(new) if t in (params.stop_token_ids or [])]
            new = new[: stops[0] + 1] if stops else new
            outputs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=tuple(new))]))
        return outputs


STARTED: list[StandInLLM] = []


class SamplingParams:
    def __init__(self, **kwargs) -> None:
        self.__dict__.update(kwargs)


@pytest.fixture()
def stand_in_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams, module.__version__ = StandInLLM, SamplingParams, "0.0-stand-in"
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = SimpleNamespace(device_type="cpu")
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    STARTED.clear()
    return module


class RecordingLM(LocalLM):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prompts: list[list[int]] = []

    def generate(self, prompts, max_new_tokens, desc="generate"):
        self.prompts += [list(p) for p in prompts]
        return super().generate(prompts, max_new_tokens, desc)


def test_a_cpu_engine_gets_a_bounded_kv_cache_unless_one_is_set(
    tmp_path, stand_in_vllm, word_tokenizer, monkeypatch, capsys
):
    """Unset, vLLM's CPU build reserves 90 % of memory for its KV cache (22 GiB here): VLLMLM caps it."""
    from flythinker.evaluation.alpsbench.vllm_lm import CPU_KV_CACHE_GIB, VLLMLM

    tiny_llama(len(word_tokenizer)).save_pretrained(tmp_path / "tiny")
    word_tokenizer.save_pretrained(tmp_path / "tiny")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "")
    VLLMLM(str(tmp_path / "tiny"), show_progress=False)
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == str(CPU_KV_CACHE_GIB)
    assert "VLLM_CPU_KVCACHE_SPACE unset" in capsys.readouterr().err
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "7")
    VLLMLM(str(tmp_path / "tiny"), show_progress=False)
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "7" and "unset" not in capsys.readouterr().err


def test_vllm_engine_gets_local_prompts_and_gives_local_predictions(tmp_path, stand_in_vllm, word_tokenizer):
    from flythinker.evaluation.alpsbench.vllm_lm import VLLMLM

    model = tiny_llama(len(word_tokenizer))
    model.save_pretrained(tmp_path / "tiny")
    word_tokenizer.save_pretrained(tmp_path / "tiny")
    settings = RunnerSettings(max_new_tokens=6, t4_max_new_tokens=6, t3_protocol="pool", t3_answer_tokens=4)
    run = dict(settings=settings, baselines=(), show_progress=False)
    lm = VLLMLM(str(tmp_path / "tiny"), batch_size=4, max_prompt_tokens=600, show_progress=False)
    (engine,) = STARTED
    assert engine.options == dict(
        dtype="float32", enforce_eager=True, skip_tokenizer_init=True, generation_config="vllm", seed=0
    )
    summary = run_alpsbench(EXAMPLES, None, TRACKS, tmp_path / "v", lm=lm, **run)
    local = RecordingLM(model, word_tokenizer, batch_size=1, max_prompt_tokens=600, show_progress=False)
    run_alpsbench(EXAMPLES, None, TRACKS, tmp_path / "l", lm=local, **run)

    sent = [p for prompts, _ in engine.calls for p in prompts]
    assert sent == local.prompts and len(sent) > 8  # the same token ids, in the same order
    assert any(len(prompts) > 1 for prompts, _ in engine.calls)  # a batch goes in one call
    eos = word_tokenizer.eos_token_id
    for _, params in engine.calls:
        assert params.temperature == 0 and params.stop_token_ids == [eos] and params.ignore_eos
    assert {params.max_tokens for _, params in engine.calls} == {6, 16}  # answers, T3 picks (none usable)
    for track in TRACKS.split(","):
        sub = f"{track}/whole_pool" if track.startswith("task3") else track
        assert read_jsonl(tmp_path / "v" / sub / "predictions.jsonl") == read_jsonl(
            tmp_path / "l" / sub / "predictions.jsonl"
        )
        assert read_jsonl(tmp_path / "v" / sub / "log.jsonl") == read_jsonl(
            tmp_path / "l" / sub / "log.jsonl"
        )
    manifest = summary["manifest"]
    assert manifest["engine"] == "vllm" and manifest["dtype"] == "torch.float32"
    assert manifest["engine_settings"] == {
        "vllm": "0.0-stand-in", "device": "cpu", "max_model_len": 4096, "enforce_eager": True,
    }  # fmt: skip
    assert summary["timing"]["model_rows"] == 5 and summary["timing"]["model_rows_per_s"] > 0
    lm.close()
    assert engine.shut_down
    with pytest.raises(RuntimeError, match="closed"):
        lm.generate([[1, 2]], 2)
    with pytest.raises(RunSettingsError, match="engine: 'vllm' -> 'hf'"):  # no resume with another engine
        run_alpsbench(EXAMPLES, None, TRACKS, tmp_path / "v", lm=local, **run)


def test_the_strip_at_eos_rule_is_the_local_one(stand_in_vllm, tmp_path, word_tokenizer):
    """A continuation that reaches EOS is cut there, with or without the stop id kept."""
    from flythinker.evaluation.alpsbench.vllm_lm import VLLMLM

    tiny_llama(len(word_tokenizer)).save_pretrained(tmp_path / "tiny")
    word_tokenizer.save_pretrained(tmp_path / "tiny")
    lm = VLLMLM(str(tmp_path / "tiny"), show_progress=False)
    eos, you, alone = word_tokenizer.eos_token_id, *word_tokenizer.convert_tokens_to_ids(["You", "alone"])
    replies = iter([(you, alone, eos, you), (you, eos), (alone,)])
    lm.llm.generate = lambda prompts, params, use_tqdm: [
        SimpleNamespace(outputs=[SimpleNamespace(token_ids=next(replies))]) for _ in prompts
    ]
    assert lm.generate([[1], [2], [3]], 4) == ["You alone", "You", "alone"]


BASE = ["alpsbench", "run", "--data", str(EXAMPLES), "--no-progress", "--baselines", "none"]


def test_the_cli_refuses_engine_vllm_when_vllm_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    argv = [*BASE, "--engine", "vllm", "--model", str(tmp_path), "--t3-protocol", "pool", "--track", "t1"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--engine vllm: vLLM is not installed" in err and "pip install -e serving/vllm" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--engine", "vllm"], "--engine vllm gives no next-token reads"),  # default --t3-protocol both
        (["--engine", "vllm", "--t3-protocol", "pool", "--judge", "same"], "no local --judge"),
        (["--engine", "vllm", "--t3-protocol", "pool", "--device", "cuda"], "leave --device out"),
        (["--engine", "vllm", "--model-endpoint", "http://127.0.0.1:9/v1"], "leave --engine out"),
        (["--vllm-max-model-len", "512"], "--engine vllm only"),
    ],
)
def test_the_cli_refuses_what_engine_vllm_cannot_do(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.setitem(sys.modules, "vllm", None)
    argv = [
        *BASE,
        "--model",
        str(tmp_path / "no-model"),
        "--track",
        "t1",
        *extra,
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
