"""Saved directories are self-describing (issue 10.2): ``auto_map`` + a two-file shim let a process
that never imported flythinker load them with ``trust_remote_code=True``; registration keeps working
without it when flythinker is imported; ``config.auto_map`` always exists (TRL reads it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from flythinker import FlyThinkerConfig, FlyThinkerForCausalLM
from flythinker.modeling.remote_code import AUTO_MAP

from ..tiny_models import tiny_flythinker, tiny_llama_config, tiny_qwen2_config

IDS = torch.tensor([[5, 17, 42, 8, 90, 3, 33, 61, 12, 7]])


def _fresh_env(tmp_path: Path) -> dict[str, str]:
    """A clean child environment: offline, its own dynamic-module cache, one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_MODULES_CACHE=str(tmp_path / "hf_modules"),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def _run_fresh(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``script`` in a new interpreter started outside the repository (so nothing imports flythinker)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=tmp_path,
        env=_fresh_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture()
def saved(tmp_path):
    model = tiny_flythinker(dtype=torch.float32)
    directory = tmp_path / "model"
    model.save_pretrained(directory)
    with torch.no_grad():
        torch.save(model(IDS).logits, tmp_path / "logits.pt")
    return model, directory


def test_saved_directory_has_auto_map_and_a_tiny_shim(saved):
    _, directory = saved
    assert json.loads((directory / "config.json").read_text())["auto_map"] == AUTO_MAP
    for name in ("configuration_flythinker.py", "modeling_flythinker.py"):
        text = (directory / name).read_text()
        assert "from flythinker import" in text and "pip install flythinker" in text
        assert len(text.splitlines()) < 30, (
            f"{name} must import the installed package, not copy the model code"
        )


@pytest.mark.slow  # a fresh interpreter (about 10 s of imports)
def test_fresh_process_loads_with_trust_remote_code_and_reproduces_logits(saved, tmp_path):
    _, directory = saved
    result = _run_fresh(
        f"""
        import sys, torch
        from transformers import AutoConfig, AutoModelForCausalLM
        assert "flythinker" not in sys.modules
        model = AutoModelForCausalLM.from_pretrained({str(directory)!r}, trust_remote_code=True).eval()
        ids = torch.tensor({IDS.tolist()})
        with torch.no_grad():
            gap = (model(ids).logits - torch.load({str(tmp_path / "logits.pt")!r})).abs().max().item()
        assert gap <= 1e-6, gap  # float32; thread counts may differ between the two processes
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        import flythinker
        assert isinstance(model, flythinker.FlyThinkerForCausalLM)
        # transformers' register_for_auto_class side effects stay on the shim classes
        assert flythinker.FlyThinkerForCausalLM._auto_class is None
        assert flythinker.FlyThinkerConfig._auto_class is None
        # a model loaded through the shim saves the same shim again, and that copy loads too
        model.save_pretrained({str(tmp_path / "again")!r})
        again = AutoModelForCausalLM.from_pretrained({str(tmp_path / "again")!r}, trust_remote_code=True)
        with torch.no_grad():
            assert torch.equal(again(ids).logits, model(ids).logits)
        config = AutoConfig.from_pretrained({str(directory)!r}, trust_remote_code=True)
        print("OK", type(config.generator_config).__name__)
    """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK Qwen2Config" in result.stdout


@pytest.mark.slow  # a fresh interpreter (about 10 s of imports)
def test_fresh_process_without_flythinker_says_how_to_install(saved, tmp_path):
    _, directory = saved
    result = _run_fresh(
        f"""
        import importlib.abc, sys

        class HideFlythinker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "flythinker":
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

        sys.meta_path.insert(0, HideFlythinker())
        from transformers import AutoModelForCausalLM
        try:
            AutoModelForCausalLM.from_pretrained({str(directory)!r}, trust_remote_code=True)
        except ImportError as error:
            print("ERROR:", error)
    """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ERROR:" in result.stdout and "pip install flythinker" in result.stdout, result.stdout


def test_registered_classes_load_without_trust_remote_code(saved):
    model, directory = saved
    for trust in (None, True):  # explicitly registered local classes win over the shim
        loaded = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=trust)
        assert type(loaded) is FlyThinkerForCausalLM and type(loaded.config) is FlyThinkerConfig
        assert type(AutoConfig.from_pretrained(directory, trust_remote_code=trust)) is FlyThinkerConfig
        with torch.no_grad():
            assert torch.equal(loaded.eval()(IDS).logits, model(IDS).logits)
    assert type(AutoModel.from_pretrained(directory)) is FlyThinkerForCausalLM
    assert FlyThinkerForCausalLM._auto_class is None and FlyThinkerConfig._auto_class is None


def test_config_auto_map_always_exists(tmp_path):
    config = FlyThinkerConfig(generator_config=tiny_qwen2_config(), reasoner_config=tiny_llama_config())
    assert config.auto_map == AUTO_MAP
    assert FlyThinkerConfig().auto_map == AUTO_MAP
    # a config.json written before auto_map existed still gets it; other entries are kept
    legacy = config.to_dict()
    legacy.pop("auto_map")
    legacy["auto_map"] = {"AutoTokenizer": ["tok.Slow", None]}
    restored = FlyThinkerConfig.from_dict(legacy)
    assert restored.auto_map == {**AUTO_MAP, "AutoTokenizer": ["tok.Slow", None]}


@pytest.mark.slow  # a fresh interpreter (about 10 s of imports)
def test_plain_import_flythinker_registers_the_auto_classes(saved, tmp_path):
    _, directory = saved
    result = _run_fresh(
        f"""
        import flythinker
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(directory)!r})  # no trust_remote_code
        assert type(model) is flythinker.FlyThinkerForCausalLM, type(model)
        print("OK")
    """,
        tmp_path,
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


LL_TASK = """task: flythinker_tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""

GEN_TASK = """task: flythinker_tiny_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""

DOCS = [
    {
        "question": "The quick brown fox jumps over the",
        "choices": ["lazy dog.", "standard library."],
        "answer": 0,
    },
    {
        "question": "This PEP proposes a new module for the",
        "choices": ["grammar", "standard library."],
        "answer": 1,
    },
    {
        "question": "You are a writing assistant. Write in the",
        "choices": ["personal style", "quick fox"],
        "answer": 0,
    },
]


def _tiny_model_with_tokenizer(directory: Path):
    from ..tiny_models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    vocab = len(tokenizer)
    torch.manual_seed(0)
    config = FlyThinkerConfig(
        generator_config=tiny_qwen2_config(vocab=vocab), reasoner_config=tiny_llama_config(vocab=vocab)
    )
    model = FlyThinkerForCausalLM(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer


def _continuation_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """Σ log p(continuation | context) split the way lm-eval's causal models split the pair."""
    whole = tokenizer.encode(context + continuation)
    n_context = len(tokenizer.encode(context))
    with torch.no_grad():
        logprobs = model(torch.tensor([whole])).logits[0].log_softmax(-1)
    return sum(logprobs[i - 1, whole[i]].item() for i in range(n_context, len(whole)))


@pytest.mark.slow
def test_lm_eval_cli_loglikelihood_and_generate_until_on_a_saved_directory(tmp_path):
    pytest.importorskip("lm_eval")
    model, tokenizer = _tiny_model_with_tokenizer(tmp_path / "model")
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "choice.yaml").write_text(LL_TASK.format(data=data))
    (tasks / "generate.yaml").write_text(GEN_TASK.format(data=data))
    command = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={tmp_path / 'model'},trust_remote_code=True,dtype=float32",
        "--tasks",
        "flythinker_tiny_choice,flythinker_tiny_generate",
        "--include_path",
        str(tasks),
        "--device",
        "cpu",
        "--batch_size",
        "1",
        "--output_path",
        str(tmp_path / "out"),
        "--log_samples",
    ]
    result = subprocess.run(
        command, cwd=tmp_path, env=_fresh_env(tmp_path), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])

    samples = {
        path.name.split("_", 1)[1].rsplit("_", 1)[0]: [json.loads(line) for line in path.open()]
        for path in (tmp_path / "out").rglob("samples_*.jsonl")
    }
    choice, generate = samples["flythinker_tiny_choice"], samples["flythinker_tiny_generate"]
    assert len(choice) == len(generate) == len(DOCS)
    for (
        sample
    ) in choice:  # lm-eval's loglikelihoods == the in-process model's (loaded there through the shim)
        for args, resp in zip(sample["arguments"].values(), sample["resps"]):
            expected = _continuation_logprob(model, tokenizer, args["arg_0"], args["arg_1"])
            assert float(resp[0][0]) == pytest.approx(expected, abs=1e-4)
    for sample in generate:  # greedy generate_until == model.generate, cut at the stop sequence
        doc = DOCS[sample["doc_id"]]
        ids = torch.tensor([tokenizer.encode(doc["question"])])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
        text = tokenizer.decode(out[0, ids.shape[1] :]).split("\n")[0]
        assert sample["resps"][0][0] == text


def test_lm_eval_reads_the_generator_context_length(tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval.models.utils import resolve_max_length

    _, tokenizer = _tiny_model_with_tokenizer(tmp_path / "model")
    config = AutoConfig.from_pretrained(tmp_path / "model")
    if (
        getattr(config, "max_position_embeddings", None) is None
        and getattr(config, "text_config", None) is None
    ):
        pytest.skip(
            "FlyThinkerConfig exposes no top-level max_position_embeddings / text_config yet (issue 10.3)"
        )
    assert config.get_text_config().max_position_embeddings == 256
    assert resolve_max_length(config, tokenizer) == 256  # lm-eval's fallback would be 2048
