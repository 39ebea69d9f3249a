"""Smoke test of bench/bench_train.py on tiny random models: every step kind runs, results are written,
and the re-created reference recipe computes the library's objective when nothing is padded."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import LlamaForCausalLM, Qwen2ForCausalLM

from bench import bench_train as bt
from flythinker import FlyThinkerForCausalLM
from tests.tiny_models import VOCAB, tiny_llama_config, tiny_qwen2_config

# Not 0: the tiny configs' pad_token_id row of the embedding is zero, and the reference recipe divides
# by the norm of the reasoner state under the pads (0/0). Real pads (SmolLM2's <|im_end|>) are trained tokens.
PAD = 5


def tiny_pair(dtype=torch.float64):
    torch.manual_seed(0)
    generator = Qwen2ForCausalLM(tiny_qwen2_config(hidden=32)).to(dtype)
    reasoner_lm = LlamaForCausalLM(tiny_llama_config(hidden=16, tie=True)).to(dtype)
    model = FlyThinkerForCausalLM.from_components(generator=generator, reasoner=reasoner_lm)
    return model.to(dtype), reasoner_lm


def features(lengths, prompt=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, VOCAB, (n,), generator=g).tolist()
        k = min(prompt, n - 1)
        out.append({"input_ids": ids, "labels": [-100] * k + ids[k:]})
    return out


def test_reference_collate_left_pads_and_positions():
    batch = bt.reference_collate(features([4, 6]), pad_token_id=0, row_length=8)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].tolist() == [[0] * 4 + [1] * 4, [0] * 2 + [1] * 6]
    assert batch["position_ids"][0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3]
    assert (batch["labels"][:, :2] == -100).all()
    with pytest.raises(ValueError, match="row length"):
        bt.reference_collate(features([9]), pad_token_id=0, row_length=8)


def test_reference_recipe_matches_library_loss_without_padding_and_leaks_with_it():
    model, reasoner_lm = tiny_pair()
    model.eval()
    feats = features([12])
    reference = bt.ReferenceRecipe(model.generator, reasoner_lm, model.config.fusion_lambda)
    from flythinker.train.collators import PaddingCollator

    ours = model(**PaddingCollator(PAD)(feats)).loss
    exact = reference(**bt.reference_collate(feats, PAD, row_length=12))
    # the reference upcasts logits with .float(): fp32 CE over fp64 logits
    assert exact.dtype == torch.float32
    torch.testing.assert_close(exact.double(), ours, rtol=1e-6, atol=0)
    # left padding: the reference injects the last pad's state into the first real token (the §1 bug)
    leaked = reference(**bt.reference_collate(feats, PAD, row_length=16))
    assert abs(leaked.item() - ours.item()) > 1e-4 * ours.item()


def test_benchmark_code_path_one_step(tmp_path):
    model, reasoner_lm = tiny_pair(torch.float32)
    model.train()
    feats = features([10, 7], seed=1)
    variants = bt.build_variants(model, reasoner_lm, feats, pad_token_id=PAD, max_length=24, row_length=32)
    assert set(variants) == set(bt.VARIANTS)
    assert variants["reference"].width == 32 and variants["flythinker_packed"].rows == 1
    optimizer = bt.make_optimizer(model)
    before = [p.detach().clone() for p in model.parameters()]
    bt.init_optimizer_state(optimizer)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    result = bt.measure(
        model, variants, optimizer, torch.device("cpu"), repeats=1, reference_repeats=1, log=lambda _: None
    )
    summary = bt.summarize(variants, result)
    per = summary["variants"]
    for name in bt.VARIANTS:
        assert per[name]["steps"] == 1 and per[name]["median_step_s"] > 0
        assert math.isfinite(per[name]["losses"][0])
        assert per[name]["memory"]["peak_bytes"] > per[name]["memory"]["static_bytes"] > 0
    assert per["flythinker_padded"]["real_tokens"] == 17
    assert per["reference"]["pad_fraction"] == pytest.approx(1 - 17 / 64)
    ratios = summary["ratios"]
    assert all(v is not None and v > 0 for v in ratios.values())
    samples = result["samples"]
    fly, sft, rsn = (samples[n][0] for n in ("flythinker_padded", "sft", "reasoner_fwd_bwd"))
    floor = summary["floor"]
    assert floor["fwd_bwd"]["median"] == pytest.approx(
        fly["fwd_bwd_s"] / (sft["fwd_bwd_s"] + rsn["fwd_bwd_s"])
    )
    assert floor["step"]["median"] == pytest.approx(fly["step_s"] / (sft["step_s"] + rsn["step_s"]))
    assert floor["step_vs_issue_floor"]["median"] == pytest.approx(
        fly["step_s"] / (sft["step_s"] + rsn["fwd_bwd_s"])
    )
    report = {
        "environment": bt.environment(torch.device("cpu")),
        "settings": {
            "dtype": "float32",
            "records": 2,
            "offset": 0,
            "max_length": 24,
            "max_target_tokens": 8,
            "reference_row_length": 32,
            "repeats": 1,
            "reference_repeats": 1,
            "warmup": 1,
            "memory_method": "profiler",
        },
        "summary": summary,
        "load_average": {"before": [0, 0, 0], "after": [0, 0, 0]},
    }
    json_path, md_path = bt.write_results(report, tmp_path, "train_test")
    assert json.loads(json_path.read_text())["summary"]["ratios"] == pytest.approx(ratios)
    assert "flythinker_padded" in md_path.read_text()
    assert "issue 12 as written" in md_path.read_text()
