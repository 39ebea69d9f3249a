"""Data and training for FlyThinkerConfig(reasoner_context=True): the reasoner reads profile + prompt, the
generator the prompt with at most K profile tokens (train/reasoner_context.py); run_finetune trains it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from flythinker import FlyThinkerForCausalLM
from flythinker.cli import build_parser, main
from flythinker.decoding import generate
from flythinker.predict import PredictionSettings, generate_predictions
from flythinker.train.finetune import FinetuneConfig, prepare_dataset, run_finetune
from flythinker.train.prompts import DEFAULT_PROFILE_HEADER, PromptBuilder
from flythinker.train.readers import read_records
from flythinker.train.reasoner_context import ReasonerContextBuilder, ReasonerContextCollator
from tests.finetune_helpers import workspace_config


def _builder(tokenizer, **options):
    values = {"max_length": 256, "max_target_tokens": 64, "profile_tokens": 0, **options}
    return PromptBuilder(tokenizer, **values)


def test_generator_ids_are_the_reasoner_ids_suffix_without_the_profile(workspace):
    tokenizer = workspace["tokenizer"]
    records = read_records(workspace["train"])
    builder = _builder(tokenizer)
    context = ReasonerContextBuilder(builder)
    for record in records[:4]:
        example = context.encode(record)
        ids, reasoner = example["input_ids"], example["reasoner_input_ids"]
        assert ids == builder.encode(record)["input_ids"]
        assert reasoner[-len(ids) :] == ids and len(reasoner) <= 256
        assert example["reasoner_profile_tokens"] == len(reasoner) - len(ids) > 0
        assert DEFAULT_PROFILE_HEADER not in tokenizer.decode(ids)
        assert tokenizer.decode(reasoner).startswith(DEFAULT_PROFILE_HEADER)
        assert example["reasoner_attention_mask"] == [1] * len(reasoner)
        # the generation prompts are the training prompts (reserve_target=True)
        prompt = context.encode_prompt(record)
        assert prompt["input_ids"] == ids[: example["prompt_length"]]
        assert prompt["reasoner_input_ids"] == reasoner[: len(reasoner) - len(ids) + example["prompt_length"]]


def test_profile_block_shrinks_to_fit_max_length(workspace):
    tokenizer = workspace["tokenizer"]
    record = max(read_records(workspace["train"]), key=lambda r: len(str(r.profile)))
    full = ReasonerContextBuilder(_builder(tokenizer, max_length=512)).encode(record)
    tight_length = len(full["input_ids"]) + full["reasoner_profile_tokens"] // 2
    tight = ReasonerContextBuilder(_builder(tokenizer, max_length=tight_length)).encode(record)
    assert tight["input_ids"] == full["input_ids"]
    assert 0 < len(tight["reasoner_input_ids"]) <= tight_length
    assert tight["reasoner_profile_tokens"] < full["reasoner_profile_tokens"]


def test_profile_tokens_caps_the_generator_profile(workspace):
    tokenizer = workspace["tokenizer"]
    record = read_records(workspace["train"])[0]
    request = len(tokenizer(record.request, add_special_tokens=False)["input_ids"])
    template = len(_builder(tokenizer).encode_prompt(record)["input_ids"]) - request
    for k in (0, 12, 40):
        prompt = _builder(tokenizer, profile_tokens=k).encode_prompt(record)["input_ids"]
        assert len(prompt) - template <= request + k
    everything = _builder(tokenizer, profile_tokens=None).encode_prompt(record)["input_ids"]
    assert len(everything) > len(_builder(tokenizer, profile_tokens=12).encode_prompt(record)["input_ids"])
    with pytest.raises(ValueError, match="profile_tokens must be an integer >= 0"):
        _builder(tokenizer, profile_tokens=-1)


def _context_model(workspace, **options):
    root = workspace["root"]
    return FlyThinkerForCausalLM.from_components(
        generator=str(root / "generator"),
        reasoner=str(root / "reasoner"),
        reasoner_context=True,
        dtype=torch.float64,
        **options,
    ).eval()


def test_collated_batch_equals_each_example_alone(workspace):
    tokenizer = workspace["tokenizer"]
    model = _context_model(workspace)
    records = read_records(workspace["train"])[:3]
    records[2] = dataclasses.replace(records[2], profile=[])  # nothing more for the reasoner
    features = [  # different profile blocks: different room left by max_length, and none
        ReasonerContextBuilder(_builder(tokenizer, profile_tokens=8, max_length=n)).encode(r)
        for n, r in zip((256, 230, 256), records)
    ]
    batch = ReasonerContextCollator(tokenizer.pad_token_id)(features)
    widths = {len(f["reasoner_input_ids"]) - len(f["input_ids"]) for f in features}
    assert len(widths) == 3 and 0 in widths  # different profile lengths share one batch
    assert (batch["attention_mask"][:, -1] == 1).all() and (
        batch["reasoner_attention_mask"][:, -1] == 1
    ).all()
    with torch.no_grad():
        out = model(**batch, return_logits=True)
        losses = []
        for b, feature in enumerate(features):
            alone = ReasonerContextCollator(tokenizer.pad_token_id)([feature])
            single = model(**alone, return_logits=True)
            n = len(feature["input_ids"])
            assert (out.logits[b, -n:] - single.logits[0]).abs().max().item() <= 1e-10
            labelled = sum(label != -100 for label in feature["labels"][1:])
            losses.append((single.loss * labelled, labelled))
    expected = sum(loss for loss, _ in losses) / sum(n for _, n in losses)
    assert abs(out.loss.item() - expected.item()) <= 1e-10
    with pytest.raises(ValueError, match="ReasonerContextBuilder"):
        ReasonerContextCollator(tokenizer.pad_token_id)([{"input_ids": [1, 2]}])


def test_run_finetune_trains_and_the_model_generates(workspace, tmp_path, capsys):
    options = dict(
        max_target_tokens=64, max_steps=2, global_batch_size=2, save_steps=2, seed=7, logging_steps=1,
        reasoner_context=True, profile_tokens=0, recipe="gate_center", center_reasoner_batches=2,
        reasoner_mode="freeze",
    )  # fmt: skip
    metrics = run_finetune(workspace_config(workspace, tmp_path / "run", **options))
    assert metrics["global_step"] == 2
    model = FlyThinkerForCausalLM.from_pretrained(tmp_path / "run" / "model", dtype=torch.float64).eval()
    assert model.config.reasoner_context is True
    # μ was estimated on the reasoner's own sequences (profile + prompt), the first 2 one-example batches
    tokenizer = workspace["tokenizer"]
    context = ReasonerContextBuilder(_builder(tokenizer, profile_tokens=0))
    records = read_records(workspace["train"])
    with torch.no_grad():
        states = [
            model.reasoner(
                input_ids=torch.tensor([context.encode(r)["reasoner_input_ids"]])
            ).last_hidden_state[0]
            for r in records[:2]
        ]
    center = torch.cat(states).mean(0)
    assert (model.fusion.reasoner_center - center).abs().max().item() <= 1e-5
    prompts = [context.encode_prompt(r) for r in records[:2]]
    rows = [torch.tensor(p["input_ids"]) for p in prompts]
    reasoner_rows = [torch.tensor(p["reasoner_input_ids"]) for p in prompts]
    from tests.modeling.test_reasoner_context import left_pad

    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    reasoner_ids, reasoner_mask = left_pad(reasoner_rows, tokenizer.pad_token_id)
    out = generate(
        model, ids, mask, reasoner_input_ids=reasoner_ids, reasoner_attention_mask=reasoner_mask,
        schedule="sequential", max_new_tokens=4, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    assert out.sequences.shape == (2, ids.shape[1] + 4)
    # `flythinker generate`'s path: the engine and transformers' generate() give the same predictions
    settings = dict(max_new_tokens=4, batch_size=2)
    engine, _ = generate_predictions(
        model, tokenizer, records[:3], context, PredictionSettings(**settings), progress=False
    )
    hf, _ = generate_predictions(
        model, tokenizer, records[:3], context, PredictionSettings(**settings, schedule="hf"), progress=False
    )
    assert engine == hf and len(engine) == 3
    assert [row["prompt_tokens"] for row in engine] == [len(p["input_ids"]) for p in prompts] + [
        len(context.encode_prompt(records[2])["input_ids"])
    ]
    argv = ["generate", "--model", str(tmp_path / "run" / "model"), "--data", workspace["train"],
            "--max-records", "2", "--max-length", "256", "--max-target-tokens", "64", "--max-new-tokens", "3"]  # fmt: skip
    assert main([*argv, "--run-dir", str(tmp_path / "gen0")]) != 0
    assert "--profile-tokens as in training" in capsys.readouterr().err
    assert main([*argv, "--run-dir", str(tmp_path / "gen"), "--profile-tokens", "0"]) == 0
    written = [json.loads(line) for line in (tmp_path / "gen" / "predictions.jsonl").read_text().splitlines()]
    assert [row["prediction"] for row in written] == [row["prediction"] for row in engine[:2]]


def test_options_are_checked_and_reach_the_command_line(workspace, tmp_path):
    sft = workspace_config(workspace, tmp_path / "x", reasoner_context=True, method="sft", reasoner=None)
    with pytest.raises(ValueError, match="--method sft trains the generator alone: --reasoner-context"):
        sft.validate()
    packed = workspace_config(workspace, tmp_path / "x", reasoner_context=True, packing=True)
    with pytest.raises(ValueError, match="--reasoner-context true needs --method flythinker"):
        packed.validate()
    with pytest.raises(ValueError, match="--profile-tokens must be an integer >= 0"):
        workspace_config(workspace, tmp_path / "x", profile_tokens=-2).validate()
    args = build_parser().parse_args(
        ["train", "--train-file", "t", "--output-dir", "o", "--generator", "g",
         "--reasoner-context", "true", "--profile-tokens", "0"]
    )  # fmt: skip
    assert args.reasoner_context is True and args.profile_tokens == 0
    # SFT without the profile (a control arm): the generator's prompts leave it out
    sft = workspace_config(
        workspace, tmp_path / "sft", method="sft", reasoner=None, profile_tokens=0, max_target_tokens=64
    )
    sft.validate()
    tokenizer = workspace["tokenizer"]
    features = prepare_dataset(sft, tokenizer, read_records(workspace["train"])[:2])
    assert all(DEFAULT_PROFILE_HEADER not in tokenizer.decode(f["input_ids"]) for f in features)
    assert all("reasoner_input_ids" not in f for f in features)
    assert FinetuneConfig(
        train_file="t", output_dir="o", generator="g", reasoner_context=True
    ).model_options()["reasoner_context"]
