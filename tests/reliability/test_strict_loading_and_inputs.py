"""Strict FlyThinker loading, and clear errors for inputs the forward cannot process (issue 16)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from flythinker import FlyThinkerForCausalLM
from flythinker.cli import main
from flythinker.modeling import loading
from tests.tiny_models import left_padded_batch, tiny_flythinker, tiny_qwen2_config


def _drop_key(directory, key):
    state = load_file(str(directory / "model.safetensors"))
    del state[key]
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def test_a_missing_key_fails_by_default_naming_it(tmp_path):
    tiny_flythinker().save_pretrained(tmp_path)
    _drop_key(tmp_path, "reasoner.layers.1.mlp.down_proj.weight")
    for load in (FlyThinkerForCausalLM.from_pretrained, AutoModelForCausalLM.from_pretrained):
        with pytest.raises(
            loading.CheckpointMismatchError,
            match=r"missing keys \(reasoner\.layers\.1\.mlp\.down_proj\.weight",
        ):
            load(tmp_path)
    loaded = FlyThinkerForCausalLM.from_pretrained(tmp_path, strict=False)  # the explicit opt-out
    assert isinstance(loaded, FlyThinkerForCausalLM)


def test_a_plain_qwen2_state_dict_in_a_flythinker_directory_fails(tmp_path):
    tiny_flythinker().save_pretrained(tmp_path)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_qwen2_config()).save_pretrained(tmp_path / "qwen2")
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "qwen2" / "model.safetensors").read_bytes())
    with pytest.raises(loading.CheckpointMismatchError, match=r"unexpected keys \(model\..*plain causal LM"):
        FlyThinkerForCausalLM.from_pretrained(tmp_path)


def test_adding_reward_heads_to_a_trained_model_is_an_allowed_opt_out(tmp_path):
    tiny_flythinker().save_pretrained(tmp_path)
    heads = {"quality": {"kind": "perm"}}
    with pytest.raises(loading.CheckpointMismatchError, match="reward_heads"):
        FlyThinkerForCausalLM.from_pretrained(tmp_path, reward_heads=heads)
    model = FlyThinkerForCausalLM.from_pretrained(
        tmp_path, reward_heads=heads, allow_missing=("reward_heads.",)
    )
    assert hasattr(model, "reward_heads")
    model, info = FlyThinkerForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_generate_exits_with_one_line_on_a_checkpoint_missing_a_key(
    tiny_model_dir, workspace, tmp_path, capsys
):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    _drop_key(broken, "generator.model.norm.weight")
    assert (
        main(
            [
                "generate",
                "--model",
                str(broken),
                "--data",
                workspace["train"],
                "--run-dir",
                str(tmp_path / "g"),
                "--max-length",
                "256",
                "--max-target-tokens",
                "32",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "generator.model.norm.weight" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ inputs
def test_a_prompt_longer_than_max_position_embeddings_is_a_clear_error():
    model = tiny_flythinker()
    ids = torch.randint(3, 90, (1, 257))  # tiny configs: max_position_embeddings = 256
    with pytest.raises(ValueError, match="max_position_embeddings=256"):
        model(ids)
    with pytest.raises(ValueError, match="max_position_embeddings=256"):
        model.generate(
            ids[:, :250], attention_mask=torch.ones_like(ids[:, :250]), max_new_tokens=10, do_sample=False
        )


def test_an_all_padding_row_under_generate_is_a_clear_error():
    model = tiny_flythinker()
    input_ids, attention_mask, _ = left_padded_batch([5, 3])
    attention_mask[1] = 0
    with pytest.raises(ValueError, match=r"batch rows \[1\] are all padding"):
        model.generate(
            input_ids, attention_mask=attention_mask, max_new_tokens=3, do_sample=False, pad_token_id=0
        )


@pytest.mark.parametrize("bad_id", [96, 10_000, -1])
def test_out_of_range_token_ids_are_a_clear_error(bad_id):
    model = tiny_flythinker()
    ids = torch.tensor([[5, 6, bad_id, 7]])
    with pytest.raises(ValueError, match=rf"token id {bad_id}, outside \[0, 96\)"):
        model(ids)


def test_valid_inputs_pass_and_decode_steps_are_not_synchronised(monkeypatch):
    from flythinker.modeling.input_checks import validate_model_inputs

    model = tiny_flythinker()
    input_ids, attention_mask, _ = left_padded_batch([5, 3])
    calls = []
    original = torch.Tensor.tolist

    def counting_tolist(self):
        calls.append(tuple(self.shape))
        return original(self)

    validate_model_inputs(model.config, input_ids, attention_mask, past_length=0)
    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    validate_model_inputs(model.config, input_ids[:, -1:], torch.ones(2, 9, dtype=torch.long), past_length=8)
    assert calls == []  # a one-token decode step costs no host sync
    out = model.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=3, do_sample=False, pad_token_id=0
    )
    assert out.shape == (2, 8)
