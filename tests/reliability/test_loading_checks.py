"""Loading checks what the files say (issue 23): a safetensors header that relabels a weight's dtype is
refused by name instead of loading values ~1e9."""

from __future__ import annotations

import json
import shutil

import pytest

from flythinker.cli import main


def _relabel(weights, name_part: str, dtype: str = "I32") -> str:
    """Rewrite the dtype of the first tensor whose name contains ``name_part`` (same length: the header
    stays valid and every offset holds)."""
    raw = weights.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    name = next(k for k in header if name_part in k and header[k]["dtype"] == "F32")
    header[name]["dtype"] = dtype
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (length - len(text))
    assert len(text) == length
    weights.write_bytes(raw[:8] + text + raw[8 + length :])
    return name


def test_a_relabelled_flythinker_weight_is_refused_by_name(tiny_model_dir, tmp_path):
    from flythinker import FlyThinkerForCausalLM
    from flythinker.modeling.loading import CheckpointMismatchError

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    name = _relabel(model_dir / "model.safetensors", "embed_tokens")
    with pytest.raises(CheckpointMismatchError, match=f"tensor {name} is stored as I32"):
        FlyThinkerForCausalLM.from_pretrained(model_dir)


def test_generate_refuses_a_relabelled_plain_model(workspace, tmp_path, capsys):
    model_dir = tmp_path / "plain"
    shutil.copytree(workspace["root"] / "generator", model_dir)
    name = _relabel(model_dir / "model.safetensors", "q_proj")
    argv = ["generate", "--model", str(model_dir), "--data", workspace["train"], "--run-dir", str(tmp_path / "g"),
            "--max-length", "256", "--max-target-tokens", "32", "--max-new-tokens", "2"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"tensor {name} is stored as I32" in err and "model.safetensors" in err
    assert not (tmp_path / "g" / "predictions.jsonl").exists()
