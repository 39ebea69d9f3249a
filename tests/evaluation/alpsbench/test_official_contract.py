"""Where the official runner's contract differs from a strict reading, follow the official (issue 24 item 7)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from flythinker.cli import main
from flythinker.evaluation.alpsbench.contract import PredictionContractError, load_predictions
from flythinker.evaluation.alpsbench.data import resolve_split_dir
from flythinker.evaluation.alpsbench.lm import resolve_device
from tests.evaluation.alpsbench._fakes import EXAMPLES, read_jsonl


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_non_object_items_are_dropped_with_a_warning_and_the_rest_scored(tmp_path):
    item = {"label": "A", "value": "x", "type": "direct"}
    path = _write(tmp_path / "p.jsonl", [{"benchmark_id": "a", "memory_items": [item, "junk", 3, item]}])
    with pytest.warns(UserWarning, match=r"p.jsonl:1: dropped 2 non-object memory_items"):
        rows = load_predictions(path, "task1", ["a"])
    assert rows["a"]["memory_items"] == [item, item]


def test_misspelt_item_keys_are_contract_errors(tmp_path):
    path = _write(
        tmp_path / "p.jsonl", [{"benchmark_id": "a", "memory_items": [{"lable": "A", "value": "x"}]}]
    )
    with pytest.raises(
        PredictionContractError, match=r"memory_items\[0\] has the key 'lable'; did you mean 'label'"
    ):
        load_predictions(path, "task2", ["a"])
    ok = _write(tmp_path / "q.jsonl", [{"benchmark_id": "a", "memory_items": [{"label": "A", "note": "x"}]}])
    assert load_predictions(ok, "task2", ["a"])  # an unrelated extra key is not a misspelling


def test_score_on_the_test_split_checks_the_contract_and_writes_it_unscored(tmp_path):
    split = tmp_path / "benchmark_data" / "test"
    shutil.copytree(EXAMPLES, split)
    for ref in split.rglob("reference_output.jsonl"):
        ref.unlink()
    bid = read_jsonl(split / "task1" / "model_input.jsonl")[0]["benchmark_id"]
    preds = _write(tmp_path / "task1_preds.jsonl", [{"benchmark_id": bid, "memory_items": []}])
    out = tmp_path / "o"
    argv = ["alpsbench", "score", "--data", str(tmp_path / "benchmark_data"), "--split", "test"]
    assert main([*argv, "--predictions", str(preds), "--track", "task1", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split"] == "test" and summary["tracks"] == []
    assert summary["not_scored"][0]["track"] == "task1"
    assert "not scored: the test split hides its references" in (out / "summary.md").read_text()
    bad = _write(tmp_path / "bad.jsonl", [{"benchmark_id": bid, "memory_items": [], "extra": 1}])
    assert main([*argv, "--predictions", str(bad), "--track", "task1", "--out", str(out)]) != 0


def test_data_accepts_a_hugging_face_download_root(tmp_path):
    shutil.copytree(EXAMPLES, tmp_path / "hf" / "dataset" / "examples")
    assert resolve_split_dir(tmp_path / "hf", "examples") == tmp_path / "hf" / "dataset" / "examples"
    assert resolve_split_dir(tmp_path / "hf" / "dataset", "examples").name == "examples"


def test_device_option():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def _saved_tiny_model(tmp_path):
    from tests.word_models import build_word_tokenizer, tiny_llama

    tok = build_word_tokenizer()
    tiny_llama(len(tok)).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    return str(tmp_path / "m")


def test_no_progress_silences_loading_bars(tmp_path):
    from transformers.utils import logging as hf_logging

    from flythinker.evaluation.alpsbench.lm import load_local_lm

    path = _saved_tiny_model(tmp_path)
    hf_logging.enable_progress_bar()
    try:
        lm = load_local_lm(path, device="cpu", max_prompt_tokens=64, show_progress=False)
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()
    assert next(lm.model.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="--dtype 'float8'"):
        load_local_lm(path, dtype="float8")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_cuda_places_and_decodes_on_the_gpu(tmp_path):
    from flythinker.evaluation.alpsbench.lm import load_local_lm

    lm = load_local_lm(_saved_tiny_model(tmp_path), device="cuda", max_prompt_tokens=64, show_progress=False)
    assert next(lm.model.parameters()).device.type == "cuda"
    ids = lm.render([{"role": "user", "content": "hello"}])
    assert len(lm.generate([ids, ids], 4)) == 2
