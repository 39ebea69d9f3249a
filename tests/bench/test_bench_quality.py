"""Smoke test of bench/bench_quality.py on tiny random models (``--tiny``), plus its pieces against
independent references: the lr schedule vs transformers', the val NLL vs log-softmax by hand, the data
order, the reasoner truncation, and resuming from the partial file."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bench import bench_quality as bq

TINY = [
    "--tiny",
    "--train-records",
    "16",
    "--steps",
    "3",
    "--eval-every",
    "2",
    "--val-records",
    "3",
    "--gen-records",
    "2",
    "--gen-batch-size",
    "2",
    "--max-new-tokens",
    "4",
    "--max-length",
    "192",
    "--max-target-tokens",
    "48",
]


def test_lr_factor_matches_transformers_linear_schedule():
    from transformers import get_linear_schedule_with_warmup

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    schedule = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=3, num_training_steps=10)
    for step in range(10):
        assert bq.lr_factor(step, 3, 10) == pytest.approx(optimizer.param_groups[0]["lr"], abs=1e-12)
        optimizer.step()
        schedule.step()


def test_training_order_is_a_seeded_permutation_per_epoch():
    order = bq.training_order(5, seed=3, n_batches=6, batch_size=2)  # 12 indices: 2 epochs + 2
    flat = [i for b in order for i in b]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    assert order == bq.training_order(5, seed=3, n_batches=6, batch_size=2)
    assert order != bq.training_order(5, seed=4, n_batches=6, batch_size=2)


def test_truncate_layers_keeps_the_first_layers():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    lm = LlamaForCausalLM(config).eval()
    first = list(lm.model.layers)[:2]
    bq.truncate_layers(lm, 2)
    assert list(lm.model.layers) == first and lm.config.num_hidden_layers == 2
    ids = torch.randint(0, 50, (1, 7))
    out = lm.model(ids).last_hidden_state  # runs with the truncated stack
    assert out.shape == (1, 7, 16)
    with pytest.raises(ValueError, match="reasoner-layers"):
        bq.truncate_layers(lm, 5)


def test_val_nll_is_mean_nats_per_label_token():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).double().eval()
    g = torch.Generator().manual_seed(1)
    val = []
    for n, prompt in ((9, 4), (6, 2), (12, 7)):
        ids = torch.randint(1, 40, (n,), generator=g).tolist()
        val.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    data = bq.Data(train=[], val=val, gen_prompts=[], gen_references=[], val_indices=[], gen_indices=[])
    got = bq.val_nll(model, data, pad_id=0, device=torch.device("cpu"), batch_size=2)
    total, tokens = 0.0, 0
    for example in val:  # by hand, one record at a time, no padding
        ids = torch.tensor([example["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        for t, label in enumerate(example["labels"][1:]):
            if label != -100:
                total -= float(logp[t, label])
                tokens += 1
    assert got["tokens"] == tokens == 5 + 4 + 5
    assert got["nll"] == pytest.approx(
        total / tokens, rel=1e-6
    )  # transformers' loss upcasts logits to fp32 only


def test_harness_end_to_end_on_tiny_models_and_resumes(tmp_path, capsys):
    from flythinker.train.recipes import RECIPES

    names = list(RECIPES)
    out = str(tmp_path)
    bq.main([*TINY, "--seeds", "0", "--out", out])  # every recipe, one seed
    bq.main([*TINY, "--variants", "sft,paper", "--seeds", "0,1", "--out", out])  # resumes: only seed 1 runs
    printed = capsys.readouterr().out
    assert f"2 runs to do ({len(names)} already in" in printed

    report = json.loads((tmp_path / "quality_cpu.json").read_text())
    runs = {(r["variant"], r["seed"]): r for r in report["runs"]}
    assert set(runs) == {(n, 0) for n in names} | {("sft", 1), ("paper", 1)}
    for run in runs.values():
        assert [s["step"] for s in run["train"]] == [1, 2, 3]
        assert [v["step"] for v in run["val"]] == [0, 2, 3]
        assert all(math.isfinite(s["loss"]) for s in run["train"])
        assert set(bq.METRICS) <= set(run["generation"]) and len(run["generation"]["predictions"]) == 2
        assert run["generator_probe_loss"] == report["generator_probe_loss"]
    # the same data order for every variant of a seed, a different one for another seed
    tokens = {k: [s["records"] for s in r["train"]] for k, r in runs.items()}
    assert all(tokens[(n, 0)] == tokens[("sft", 0)] for n in names)
    assert tokens[("sft", 1)] == tokens[("paper", 1)] != tokens[("sft", 0)]
    assert runs[("sft", 0)]["step0_probe_diff"] == 0.0 == runs[("sft", 0)]["step0_probe_logits_max_abs_diff"]
    assert runs[("paper", 0)]["step0_probe_logits_max_abs_diff"] > 0
    # warm starts that make step 0 the generator: the probe loss equals the generator's
    for name, recipe in RECIPES.items():
        overrides = dict(recipe.config_overrides)
        exact = (
            overrides.get("fusion_gate", "none") != "none"
            or overrides.get("projection_init") == "zero"
            or (recipe.lambda_warmup_steps or 0) > 0
        )
        if exact:
            run = runs[(name, 0)]  # bit-for-bit: logits and the float64 loss computed from them
            assert run["step0_probe_logits_max_abs_diff"] == 0.0 and run["step0_probe_diff"] == 0.0, name
    # λ warm-up: s = min(1, step/N) before each step, the evaluation after s steps uses min(1, s/N)
    from flythinker.train.recipes import warmup_steps_for

    for name, recipe in RECIPES.items():
        n = warmup_steps_for(recipe, 3)
        if recipe.method != "sft" and n > 0:
            assert [s["lambda_scale"] for s in runs[(name, 0)]["train"]] == [min(1, k / n) for k in range(3)]
            assert [v["lambda_scale"] for v in runs[(name, 0)]["val"]] == [min(1, k / n) for k in (0, 2, 3)]
    summary = report["summary"]
    assert summary["paper"]["seeds"] == [0, 1] and len(summary["paper"]["paired_diff_vs_sft"]) == 2
    assert summary["sft"]["paired_diff_mean"] == 0.0
    md = (tmp_path / "quality_cpu.md").read_text()
    assert all(f"| {n} |" in md for n in names) and "ROUGE-L" in md
    assert (tmp_path / "quality_cpu_val_nll.png").stat().st_size > 1000
    # the partial file is only resumed with the same options
    with pytest.raises(SystemExit, match="other options"):
        bq.main([*TINY, "--variants", "sft", "--seeds", "0", "--learning-rate", "1e-3", "--out", out])
