"""Quality experiment: SFT vs FlyThinker (paper recipe) vs every warm-start recipe on the PEP data.

Data: ``../shared/data/peps`` (LongLaMP abstract-generation schema). Training reads only
``user_train.jsonl``; every measurement reads only ``user_val.jsonl``. Prompts are built exactly as
``flythinker train`` builds them (``read_records`` → ``PromptBuilder`` → ``PaddingCollator``).

Models: SmolLM2-135M-Instruct as generator and reasoner, loaded once and deep-copied per run. By
default (CPU budget) the reasoner is **truncated to its first ``--reasoner-layers`` layers** and
**frozen** (its weights never change; gradients still flow into the generator only). SFT is the
plain generator (``AutoModelForCausalLM``) on the same prompts, data order and steps.

One run = (recipe, seed). For every run:

* the model is built with ``torch.manual_seed(seed)`` (any new parameter's init depends on the seed);
* the training order is ``randperm(seed)`` over ``user_train`` (cycled epoch by epoch), identical for
  every recipe with that seed; batch ``b`` is records ``order[b·B:(b+1)·B]``;
* centring (recipe ``center_reasoner_batches = n > 0``): ``estimate_reasoner_center`` on the first n
  training batches before step 0;
* optimizer: ``torch.optim.AdamW`` (β = 0.9, 0.999, ε = 1e-8) over the trainer's groups
  (``warm_start.optimizer_groups``): weight decay on weights, none on biases / norms / the
  warm-start parameters (gate α, a ``zero_linear`` W), whose lr is ``lr × gate_lr_multiplier``;
  schedule ``lr(s) = lr·min(1, (s+1)/W)`` for ``s < W`` then linear decay to 0 at the last step (the
  transformers ``get_linear_schedule_with_warmup`` shape); gradient clipping to ``--max-grad-norm``;
* λ warm-up (``N = recipes.warmup_steps_for(recipe, steps)``): before step s
  ``set_lambda_scale(model, min(1, s/N))``; evaluations after s steps use the same scale;
* measured: the train loss of every step; teacher-forced NLL on ``user_val`` targets (mean nats per
  label token over a fixed subset of ``--val-records`` records; the same subset for every run) at
  step 0, every ``--eval-every`` steps and at the end; then greedy generations (``model.generate``)
  for ``--gen-records`` ``user_val`` records scored with ROUGE-1/L, METEOR and BLEU
  (``flythinker.evaluation.metrics``); and the step-0 loss on a fixed PEP batch (the first
  ``--batch-size`` records of ``user_train``), next to the base generator's loss on that batch.

Outputs in ``--out`` (default ``bench/results``): ``<stem>.json`` (options, machine, versions,
every per-step number, per-run wall time), ``<stem>.md`` (tables) and ``<stem>_val_nll.png``
(val NLL vs step, mean over seeds with a ±1 std band). Each finished run is written to
``<stem>.partial.json`` as soon as it ends; a restarted command skips the runs found there.

Sizing (CPU defaults: 12 steps of batch 2 at max length 256 / target 96, val NLL on 8 records at
steps 0, 6, 12, greedy generation of 8 records × 32 tokens; the first step has lr 0, transformers'
warm-up convention): one run costs ~100–120 CPU-seconds of SmolLM2-135M on one thread (measured:
SFT 117 s, paper 101 s), so the matrix (8 recipes × 3 seeds) is ~45 CPU-minutes: ~45–50 min
wall on one free core, several times that when the 2 cores are shared (at load ≈ 10 a run took
~450–500 s wall). Each run's wall and CPU seconds are in the results.

    python bench/bench_quality.py                          # CPU default matrix (every recipe, seeds 0,1,2)
    python bench/bench_quality.py --variants sft,paper,gate_scalar --seeds 0
    python bench/bench_quality.py --scale paper            # the paper's budget, for a GPU
    python bench/bench_quality.py --report-only            # rebuild .json/.md/.png from the partial file
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_plot import plot_val_nll  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "peps"
IGNORE_INDEX = -100
METRICS = ("rouge1", "rougeL", "meteor", "bleu")


# ----------------------------------------------------------------------------------------- options
@dataclass
class Options:
    """Every knob of the experiment (saved in the results)."""

    variants: list[str] = field(default_factory=list)  # RECIPES keys; empty = all
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 12
    batch_size: int = 2
    micro_batch_size: int | None = None  # gradient accumulation when < batch_size
    max_length: int = 256
    max_target_tokens: int = 96
    learning_rate: float = 5e-5
    weight_decay: float = 0.025
    warmup_steps: float = 1  # ≥ 1: steps; in (0, 1): a fraction of --steps
    max_grad_norm: float = 1.0
    fusion_lambda: float = 0.5
    reasoner_layers: int = 4  # 0 = the full reasoner
    freeze_reasoner: bool = True
    eval_every: int = 6
    val_records: int = 8
    eval_batch_size: int = 4
    gen_records: int = 8
    gen_batch_size: int = 8
    max_new_tokens: int = 32
    scale: str = "cpu"
    tiny: bool = False
    device: str = "auto"
    dtype: str = "float32"
    threads: int | None = None
    data_dir: str = str(DATA)
    train_records: int | None = None  # use only the first N user_train records (smoke tests); None = all
    model: str | None = None  # default: the packaged SmolLM2-135M-Instruct
    out: str = str(RESULTS)
    stem: str | None = None

    def signature(self) -> dict[str, Any]:
        """The options that change results (a partial file is only resumed when these match)."""
        skip = {"variants", "seeds", "out", "stem", "threads"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


SCALES: dict[str, dict[str, Any]] = {
    "cpu": {},
    # the paper's budget: full reasoner (trained), λ 0.5, lr 5e-6, global batch 64, 5 epochs of
    # user_train (303 records → ceil(5·303/64) = 24 steps), max length 2550, warm-up 1 %
    "paper": {
        "reasoner_layers": 0,
        "freeze_reasoner": False,
        "fusion_lambda": 0.5,
        "learning_rate": 5e-6,
        "batch_size": 64,
        "micro_batch_size": 8,
        "steps": None,  # computed from 5 epochs
        "max_length": 2550,
        "max_target_tokens": 512,
        "warmup_steps": 0.01,
        "eval_every": 4,
        "val_records": 36,
        "eval_batch_size": 8,
        "gen_records": 36,
        "gen_batch_size": 12,
        "max_new_tokens": 256,
        "dtype": "bfloat16",
    },
}
PAPER_EPOCHS = 5


def parse_args(argv: Sequence[str] | None = None) -> Options:
    defaults = Options()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--variants", default="", help="comma list of flythinker.train.recipes.RECIPES keys (default: all)"
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--scale",
        choices=sorted(SCALES),
        default="cpu",
        help="'paper': the paper's budget (GPU); explicit options still override it",
    )
    for name in (
        "steps",
        "train_records",
        "batch_size",
        "micro_batch_size",
        "max_length",
        "max_target_tokens",
        "reasoner_layers",
        "eval_every",
        "val_records",
        "eval_batch_size",
        "gen_records",
        "gen_batch_size",
        "max_new_tokens",
        "threads",
    ):
        p.add_argument(
            "--" + name.replace("_", "-"), type=int, default=None, help=f"default {getattr(defaults, name)}"
        )
    for name in ("learning_rate", "weight_decay", "warmup_steps", "max_grad_norm", "fusion_lambda"):
        p.add_argument(
            "--" + name.replace("_", "-"), type=float, default=None, help=f"default {getattr(defaults, name)}"
        )
    p.add_argument("--train-reasoner", action="store_true", help="train the reasoner too (default: frozen)")
    p.add_argument("--tiny", action="store_true", help="tiny random models and a tiny tokenizer (smoke test)")
    p.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    p.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float64"),
        help="bfloat16: fp32 weights + bf16 autocast on CUDA, bf16 weights on CPU",
    )
    p.add_argument("--data-dir", default=defaults.data_dir)
    p.add_argument(
        "--model", default=None, help="a causal-LM checkpoint directory (default: packaged SmolLM2-135M)"
    )
    p.add_argument("--out", default=defaults.out, help="results folder")
    p.add_argument("--stem", default=None, help="file stem (default quality_<device>)")
    p.add_argument("--fresh", action="store_true", help="discard the partial results file and start over")
    p.add_argument(
        "--report-only", action="store_true", help="only rebuild the reports from the partial file"
    )
    args = p.parse_args(argv)

    values: dict[str, Any] = dataclasses.asdict(defaults)
    values.update({k: v for k, v in SCALES[args.scale].items()})
    explicit = {k: v for k, v in vars(args).items() if v is not None and k in values}
    values.update(explicit)
    if args.train_reasoner:
        values["freeze_reasoner"] = False
    values["variants"] = [v.strip() for v in args.variants.split(",") if v.strip()]
    values["seeds"] = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    values["scale"] = args.scale
    values["tiny"] = args.tiny
    if args.tiny and args.reasoner_layers is None:
        values["reasoner_layers"] = 1  # the tiny models have 2 layers
    options = Options(**values)
    options._fresh = args.fresh  # type: ignore[attr-defined]
    options._report_only = args.report_only  # type: ignore[attr-defined]
    return options


# --------------------------------------------------------------------------------------- recipes
def load_recipes(names: Sequence[str]) -> list[Any]:
    """The ``Recipe`` objects named (all of ``RECIPES`` when ``names`` is empty), SFT first."""
    from flythinker.train.recipes import RECIPES

    if not names:
        names = list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown --variants {unknown}; known recipes: {sorted(RECIPES)}")
    return sorted((RECIPES[n] for n in names), key=lambda r: (r.method != "sft", list(RECIPES).index(r.name)))


def recipe_dict(recipe: Any) -> dict[str, Any]:
    return dataclasses.asdict(recipe) if dataclasses.is_dataclass(recipe) else dict(vars(recipe))


# ------------------------------------------------------------------------------------------ models
@dataclass
class Base:
    """What every run starts from: the generator LM, the (truncated) reasoner LM and the tokenizer."""

    generator: Any
    reasoner: Any
    tokenizer: Any
    description: str


def truncate_layers(lm: Any, k: int) -> None:
    """Keep the first ``k`` decoder layers of a causal LM (``lm.model.layers``) and fix its config."""
    backbone = lm.get_decoder()
    n = len(backbone.layers)
    if not 0 < k <= n:
        raise ValueError(f"--reasoner-layers {k}: the reasoner has {n} layers (use 1..{n}, or 0 for all)")
    backbone.layers = torch.nn.ModuleList(list(backbone.layers)[:k])
    for config in {id(lm.config): lm.config, id(backbone.config): backbone.config}.values():
        config.num_hidden_layers = k
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = list(config.layer_types)[:k]


def tiny_tokenizer():
    """A byte-level BPE with ChatML specials trained on a few strings (any text encodes losslessly)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [
        "This PEP proposes a new module for the standard library.",
        "Title: Abstract: Generate an abstract",
        "You are a writing assistant. Earlier writing by this user:",
    ]
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>", bos_token="<|im_start|>"
    )
    fast.chat_template = (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    return fast


def load_base(options: Options, device: torch.device, dtype: torch.dtype) -> Base:
    """Load the generator/reasoner weights once (SmolLM2-135M, or tiny random Llamas with ``--tiny``)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if options.tiny:
        tokenizer = tiny_tokenizer()
        torch.manual_seed(1234)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
        )
        generator = LlamaForCausalLM(config)
        description = "tiny random Llama (hidden 32, 2 layers) as generator and reasoner"
    else:
        from flythinker.modeling.smollm import fix_end_of_turn, smollm2_path
        from flythinker.train.finetune import load_tokenizer

        path = options.model or str(smollm2_path())
        tokenizer = load_tokenizer(path)
        fix_end_of_turn(tokenizer)
        generator = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, attn_implementation="sdpa"
        )
        description = f"{Path(path).name} as generator and reasoner"
    generator = generator.to(device=device, dtype=dtype)
    generator.config._attn_implementation = "sdpa"
    reasoner = copy.deepcopy(generator)
    n_layers = len(reasoner.get_decoder().layers)
    if options.reasoner_layers:
        truncate_layers(reasoner, options.reasoner_layers)
        description += f"; reasoner = its first {options.reasoner_layers} of {n_layers} layers"
    else:
        description += f"; full reasoner ({n_layers} layers)"
    description += "; reasoner frozen" if options.freeze_reasoner else "; reasoner trained"
    generator.eval()
    reasoner.eval()
    return Base(generator=generator, reasoner=reasoner, tokenizer=tokenizer, description=description)


def build_model(base: Base, recipe: Any, options: Options, seed: int):
    """A fresh model for one run: the plain generator (SFT) or a FlyThinker with the recipe's overrides."""
    torch.manual_seed(seed)
    if recipe.method == "sft":
        return copy.deepcopy(base.generator)
    from flythinker.modeling.modeling_flythinker import FlyThinkerForCausalLM

    overrides = {"fusion_lambda": options.fusion_lambda, **dict(recipe.config_overrides)}
    model = FlyThinkerForCausalLM.from_components(
        generator=copy.deepcopy(base.generator),
        reasoner=copy.deepcopy(base.reasoner),
        tokenizer=base.tokenizer,
        attn_implementation="sdpa",
        **overrides,
    )
    if options.freeze_reasoner:
        model.reasoner.requires_grad_(False)
    return model


# -------------------------------------------------------------------------------------------- data
@dataclass
class Data:
    train: list[dict[str, Any]]  # encoded training examples (input_ids, labels, ...)
    val: list[dict[str, Any]]  # encoded val examples for the NLL subset
    gen_prompts: list[dict[str, Any]]  # encoded generation prompts
    gen_references: list[str]
    val_indices: list[int]
    gen_indices: list[int]


def val_subset(n_total: int, n: int) -> list[int]:
    """A fixed subset of ``user_val`` record indices (``random.Random(0)``; the same for every run)."""
    order = list(range(n_total))
    random.Random(0).shuffle(order)
    return sorted(order[: min(n, n_total)])


def load_data(options: Options, tokenizer) -> Data:
    from flythinker.train.prompts import PromptBuilder, encode_records
    from flythinker.train.readers import read_records

    data_dir = Path(options.data_dir)
    train_records = read_records(data_dir / "user_train.jsonl")[: options.train_records]
    val_records = read_records(data_dir / "user_val.jsonl")
    builder = PromptBuilder(
        tokenizer, max_length=options.max_length, max_target_tokens=options.max_target_tokens
    )
    train = encode_records(train_records, builder, desc="encoding user_train")
    val_idx = val_subset(len(val_records), options.val_records)
    gen_idx = val_subset(len(val_records), options.gen_records)
    val = encode_records([val_records[i] for i in val_idx], builder, desc="encoding user_val")
    gen = encode_records([val_records[i] for i in gen_idx], builder, for_generation=True, progress=False)
    return Data(
        train=train,
        val=val,
        gen_prompts=gen,
        gen_references=[val_records[i].target for i in gen_idx],
        val_indices=val_idx,
        gen_indices=gen_idx,
    )


def training_order(n_records: int, seed: int, n_batches: int, batch_size: int) -> list[list[int]]:
    """Batches of record indices: ``randperm`` with ``seed``, a new permutation every epoch."""
    generator = torch.Generator().manual_seed(seed)
    flat: list[int] = []
    while len(flat) < n_batches * batch_size:
        flat += torch.randperm(n_records, generator=generator).tolist()
    return [flat[b * batch_size : (b + 1) * batch_size] for b in range(n_batches)]


def collate(features: Sequence[dict[str, Any]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    from flythinker.train.collators import PaddingCollator

    batch = PaddingCollator(pad_id, padding_side="right")(features)
    return {k: v.to(device) for k, v in batch.items()}


def label_tokens(labels: torch.Tensor) -> int:
    """Tokens the causal-LM loss averages over: labels after the one-position shift that are not -100."""
    return int((labels[..., 1:] != IGNORE_INDEX).sum())


# ------------------------------------------------------------------------------------ measurement
@torch.no_grad()
def val_nll(
    model, data: Data, pad_id: int, device: torch.device, batch_size: int, amp=None
) -> dict[str, float]:
    """Mean NLL in nats per label token over the val subset (token-weighted across records)."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(data.val), batch_size):
        batch = collate(data.val[start : start + batch_size], pad_id, device)
        n = label_tokens(batch["labels"])
        with amp if amp is not None else contextlib.nullcontext():
            total += float(model(**batch).loss.double()) * n
        tokens += n
    model.train(was_training)
    return {"nll": total / tokens, "tokens": tokens}


@torch.no_grad()
def generate(model, data: Data, tokenizer, device: torch.device, options: Options) -> list[str]:
    """Greedy generations (``model.generate``) for the generation subset, left-padded batches."""
    model.eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    out: list[str] = []
    for start in range(0, len(data.gen_prompts), options.gen_batch_size):
        prompts = [p["input_ids"] for p in data.gen_prompts[start : start + options.gen_batch_size]]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        with autocast(options, device):
            sequences = model.generate(
                ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=options.max_new_tokens,
                do_sample=False,
                temperature=None,
                top_k=None,
                top_p=None,
                pad_token_id=pad,
                eos_token_id=eos,
            )
        for tokens in sequences[:, width:].tolist():
            if eos in tokens:
                tokens = tokens[: tokens.index(eos)]
            out.append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
    return out


@dataclass
class Probe:
    """A fixed PEP batch (the first ``--batch-size`` user_train records) and the base generator on it."""

    batch: dict[str, torch.Tensor]
    generator_loss: float  # float64 cross-entropy from the generator's logits (see probe_logits)
    generator_logits: torch.Tensor  # fp32 logits at the label positions, on the CPU


@torch.no_grad()
def probe_logits(model, batch: dict[str, torch.Tensor], amp=None) -> tuple[float, torch.Tensor]:
    """``(loss, logits)``: logits (no labels passed) at the positions that predict a label, and their
    mean cross-entropy computed in float64 by one function for every model, so a difference between
    two models is a difference of their logits, not of their loss kernels."""
    was_training = model.training
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with amp if amp is not None else contextlib.nullcontext():
        logits = model(**inputs).logits
    model.train(was_training)
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    selected = logits[:, :-1][keep].float()
    loss = torch.nn.functional.cross_entropy(selected.double(), targets[keep])
    return float(loss), selected.cpu()


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    from flythinker.evaluation.metrics import compute_metrics

    result = compute_metrics(predictions, references, metrics=METRICS)
    return {m: float(result[m]) for m in METRICS}


# --------------------------------------------------------------------------------------- training
def param_groups(model, options: Options, recipe: Any) -> list[dict[str, Any]]:
    """The trainer's AdamW groups (``flythinker.train.warm_start.optimizer_groups``): decayed weights,
    undecayed biases/norms, the warm-start parameters (gate α, a zero_linear W) at lr × multiplier."""
    from flythinker.train.warm_start import optimizer_groups

    multiplier = float(getattr(recipe, "gate_lr_multiplier", 1.0))
    return optimizer_groups(model, options.learning_rate, options.weight_decay, multiplier)


def warmup_steps(options: Options) -> int:
    w = options.warmup_steps
    return int(math.ceil(w * options.steps)) if 0 < w < 1 else int(w)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """transformers' linear schedule with warm-up: step s → s/W during warm-up, then linear to 0."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


def gate_summary(model) -> dict[str, float] | None:
    fusion = getattr(model, "fusion", None)
    logit = getattr(fusion, "gate_logit", None) if fusion is not None else None
    if logit is None:
        return None
    g = torch.tanh(logit.detach().double())
    return {
        "mean_tanh": float(g.mean()),
        "mean_abs_tanh": float(g.abs().mean()),
        "max_abs_tanh": float(g.abs().max()),
    }


def run_one(
    base: Base,
    data: Data,
    recipe: Any,
    seed: int,
    options: Options,
    device: torch.device,
    probe: Probe,
) -> dict[str, Any]:
    """Train one (recipe, seed) and measure it; returns the run's record (all per-step numbers)."""
    from tqdm.auto import tqdm

    times: dict[str, float] = {}
    load_before = os.getloadavg()
    begin = time.perf_counter()
    cpu_begin = time.process_time()
    model = build_model(base, recipe, options, seed).to(device)
    pad_id = base.tokenizer.pad_token_id
    micro = options.micro_batch_size or options.batch_size
    batches = training_order(len(data.train), seed, options.steps, options.batch_size)
    is_fly = recipe.method != "sft"
    times["build_s"] = time.perf_counter() - begin

    t = time.perf_counter()
    n_center = int(getattr(recipe, "center_reasoner_batches", 0) or 0) if is_fly else 0
    if n_center:
        from flythinker.train.warm_start import estimate_reasoner_center

        center_batches = [collate([data.train[i] for i in idx], pad_id, device) for idx in batches[:n_center]]
        with autocast(options, device):
            estimate_reasoner_center(model, center_batches)
    times["center_s"] = time.perf_counter() - t

    from flythinker.train.recipes import warmup_steps_for

    lam_warmup = warmup_steps_for(recipe, options.steps) if is_fly else 0

    def set_scale(step: int) -> float:
        if lam_warmup <= 0:
            return 1.0
        from flythinker.train.warm_start import lambda_scale_at, set_lambda_scale

        scale = lambda_scale_at(step, lam_warmup)
        set_lambda_scale(model, scale)
        return scale

    set_scale(0)
    model.eval()
    with torch.no_grad():
        with autocast(options, device):
            step0_model_loss = float(model(**probe.batch).loss)
    step0_probe, step0_logits = probe_logits(model, probe.batch, autocast(options, device))
    step0_logit_diff = float((step0_logits - probe.generator_logits).abs().max())
    del step0_logits
    evals: list[dict[str, Any]] = []

    def evaluate(step: int, scale: float) -> None:
        e = time.perf_counter()
        evals.append(
            {
                "step": step,
                "lambda_scale": scale,
                **val_nll(model, data, pad_id, device, options.eval_batch_size, autocast(options, device)),
            }
        )
        times["eval_s"] = times.get("eval_s", 0.0) + time.perf_counter() - e

    evaluate(0, set_scale(0))

    optimizer = torch.optim.AdamW(
        param_groups(model, options, recipe),
        lr=options.learning_rate,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    warmup = warmup_steps(options)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    steps: list[dict[str, Any]] = []
    model.train()
    bar = tqdm(range(options.steps), desc=f"{recipe.name} seed {seed}", unit="step", leave=False)
    train_time = 0.0
    for step in bar:
        s = time.perf_counter()
        scale = set_scale(step)
        factor = lr_factor(step, warmup, options.steps)
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr * factor
        features = [data.train[i] for i in batches[step]]
        chunks = [collate(features[k : k + micro], pad_id, device) for k in range(0, len(features), micro)]
        counts = [label_tokens(c["labels"]) for c in chunks]
        total_tokens = max(1, sum(counts))
        loss_value = 0.0
        for chunk, n in zip(chunks, counts):
            with autocast(options, device):
                loss = model(**chunk).loss * (n / total_tokens)  # token-weighted: the whole batch's mean
            loss.backward()
            loss_value += float(loss.detach())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, options.max_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if hasattr(model, "refresh_mean_embedding_norm"):
            model.refresh_mean_embedding_norm(force=True)
        seconds = time.perf_counter() - s
        train_time += seconds
        steps.append(
            {
                "step": step + 1,
                "loss": loss_value,
                "lr": base_lrs[0] * factor,
                "lambda_scale": scale,
                "grad_norm": grad_norm,
                "label_tokens": total_tokens,
                "records": list(batches[step]),
                "seconds": seconds,
            }
        )
        bar.set_postfix(loss=f"{loss_value:.3f}")
        done = step + 1
        if done % options.eval_every == 0 or done == options.steps:
            evaluate(done, set_scale(done))
            model.train()
    bar.close()
    times["train_s"] = train_time

    t = time.perf_counter()
    set_scale(options.steps)
    predictions = generate(model, data, base.tokenizer, device, options)
    times["generate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics = score(predictions, data.gen_references)
    times["score_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - begin
    times["process_cpu_s"] = time.process_time() - cpu_begin  # CPU seconds of this process (all threads)
    record = {
        "variant": recipe.name,
        "seed": seed,
        "method": recipe.method,
        "recipe": recipe_dict(recipe),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "step0_probe_loss": step0_probe,
        "generator_probe_loss": probe.generator_loss,
        "step0_probe_diff": step0_probe - probe.generator_loss,
        "step0_probe_logits_max_abs_diff": step0_logit_diff,
        "step0_probe_model_loss": step0_model_loss,  # the model's own (fused) loss, for reference
        "train": steps,
        "val": evals,
        "final_val_nll": evals[-1]["nll"],
        "generation": {
            **metrics,
            "n": len(predictions),
            "predictions": predictions,
            "mean_words": statistics.fmean(len(p.split()) for p in predictions) if predictions else 0.0,
        },
        "gate": gate_summary(model),
        "seconds": {k: round(v, 3) for k, v in times.items()},
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
    }
    return record


# ---------------------------------------------------------------------------------------- summary
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: Sequence[dict[str, Any]], variant_order: Sequence[str]) -> dict[str, Any]:
    """Per variant: final val NLL mean ± std over seeds, paired difference vs SFT, metric means ± std."""
    by_variant: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        by_variant.setdefault(run["variant"], {})[run["seed"]] = run
    sft = next((v for v, rs in by_variant.items() if next(iter(rs.values()))["method"] == "sft"), None)
    out: dict[str, Any] = {}
    for variant in [v for v in variant_order if v in by_variant]:
        rs = by_variant[variant]
        seeds = sorted(rs)
        nll = [rs[s]["final_val_nll"] for s in seeds]
        row: dict[str, Any] = {"seeds": seeds, "final_val_nll": nll}
        row["final_val_nll_mean"], row["final_val_nll_std"] = _mean_std(nll)
        row["step0_val_nll_mean"], _ = _mean_std([rs[s]["val"][0]["nll"] for s in seeds])
        row["step0_probe_diff_max_abs"] = max(abs(rs[s]["step0_probe_diff"]) for s in seeds)
        row["step0_logits_diff_max_abs"] = max(
            rs[s].get("step0_probe_logits_max_abs_diff", math.nan) for s in seeds
        )
        if sft is not None:
            paired = [
                rs[s]["final_val_nll"] - by_variant[sft][s]["final_val_nll"]
                for s in seeds
                if s in by_variant[sft]
            ]
            if paired:
                row["paired_diff_vs_sft"] = paired
                row["paired_diff_mean"], row["paired_diff_std"] = _mean_std(paired)
                row["paired_diff_min"], row["paired_diff_max"] = min(paired), max(paired)
                row["seeds_better_than_sft"] = sum(d < 0 for d in paired)
        for m in METRICS:
            row[f"{m}_mean"], row[f"{m}_std"] = _mean_std([rs[s]["generation"][m] for s in seeds])
        row["run_seconds_mean"], _ = _mean_std([rs[s]["seconds"]["total_s"] for s in seeds])
        row["run_cpu_seconds_mean"], _ = _mean_std(
            [rs[s]["seconds"].get("process_cpu_s", math.nan) for s in seeds]
        )
        out[variant] = row
    return out


def _pm(mean: float, std: float, digits: int = 4) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    o, summary = report["options"], report["summary"]
    lines = [
        f"# Quality experiment ({report['device']}): SFT vs FlyThinker recipes on PEP user_val",
        "",
        f"Command: `{report['command']}`",
        "",
        f"- Models: {report['base']}.",
        f"- Data: train on `user_train` ({report['n_train']} records), measure on `user_val` "
        f"(val NLL on {o['val_records']} fixed records, generation on {o['gen_records']}).",
        f"- Budget: {o['steps']} optimizer steps of batch {o['batch_size']} (max length {o['max_length']}, target ≤ "
        f"{o['max_target_tokens']} tokens), AdamW lr {o['learning_rate']}, wd {o['weight_decay']}, warm-up "
        f"{o['warmup_steps']}, linear decay, clip {o['max_grad_norm']}, λ {o['fusion_lambda']}; the same data order "
        f"for every variant of a seed; seeds {o['seeds']}.",
        f"- Generation: greedy `model.generate`, ≤ {o['max_new_tokens']} new tokens.",
        f"- Machine: {report['machine']['cpu_count']} CPUs, load average {report['machine']['load_average_start']} at "
        f"start, {report['machine']['load_average_end']} at end; torch {report['versions']['torch']}, transformers "
        f"{report['versions']['transformers']}; wall time {report['wall_seconds']:.0f} s "
        f"(runs {report['run_seconds_sum']:.0f} s, {report['run_seconds_sum'] / max(1, len(report['runs'])):.0f} s "
        "per run).",
        f"- Base generator's loss on the probe batch (first {o['batch_size']} user_train records): "
        f"{report['generator_probe_loss']:.6f} nats/token.",
        "",
        "## Final user_val NLL (nats/token; lower is better) and paired difference vs SFT",
        "",
        "Paired difference = variant − SFT for each seed (same data order); negative = better than SFT.",
        "",
        "| variant | final val NLL | step-0 val NLL | Δ vs SFT mean ± std | Δ min / max | seeds < SFT "
        "| step-0 probe loss − generator | step-0 max abs logit diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, row in summary.items():
        if "paired_diff_mean" in row:
            diff = _pm(row["paired_diff_mean"], row["paired_diff_std"])
            span = f"{row['paired_diff_min']:+.4f} / {row['paired_diff_max']:+.4f}"
            better = f"{row['seeds_better_than_sft']}/{len(row['paired_diff_vs_sft'])}"
        else:
            diff = span = better = "n/a"
        lines.append(
            f"| {variant} | {_pm(row['final_val_nll_mean'], row['final_val_nll_std'])} | "
            f"{row['step0_val_nll_mean']:.4f} | {diff} | {span} | {better} | "
            f"{row['step0_probe_diff_max_abs']:.2e} | {row['step0_logits_diff_max_abs']:.2e} |"
        )
    lines += [
        "",
        "## Greedy generations on user_val (mean ± std over seeds)",
        "",
        "ROUGE and METEOR in [0, 1], BLEU in [0, 100].",
        "",
        "| variant | ROUGE-1 | ROUGE-L | METEOR | BLEU | wall s/run | CPU s/run |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, row in summary.items():
        lines.append(
            f"| {variant} | {_pm(row['rouge1_mean'], row['rouge1_std'])} | "
            f"{_pm(row['rougeL_mean'], row['rougeL_std'])} | {_pm(row['meteor_mean'], row['meteor_std'])} | "
            f"{_pm(row['bleu_mean'], row['bleu_std'], 2)} | {row['run_seconds_mean']:.0f} | "
            f"{row['run_cpu_seconds_mean']:.0f} |"
        )
    lines += ["", "## Recipes", ""]
    seen: set[str] = set()
    for run in report["runs"]:
        if run["variant"] in seen:
            continue
        seen.add(run["variant"])
        r = run["recipe"]
        lines.append(
            f"- `{run['variant']}` ({r.get('method')}): {r.get('description', '')} overrides "
            f"`{r.get('config_overrides', {})}`, λ warm-up {r.get('lambda_warmup_steps', 0)}, centring "
            f"batches {r.get('center_reasoner_batches', 0)}, gate lr × {r.get('gate_lr_multiplier', 1.0)}."
        )
    if report.get("plot"):
        lines += ["", f"![val NLL vs step]({Path(report['plot']).name})"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ driver
def machine_info() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": commit,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def versions() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def autocast(options: Options, device: torch.device):
    """bf16 autocast on CUDA when ``--dtype bfloat16`` (weights and optimizer state stay fp32)."""
    if options.dtype == "bfloat16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve(options: Options) -> tuple[torch.device, torch.dtype, str]:
    device = torch.device(
        "cuda"
        if options.device == "auto" and torch.cuda.is_available()
        else ("cpu" if options.device == "auto" else options.device)
    )
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}[options.dtype]
    if dtype == torch.bfloat16 and (device.type == "cuda" or options.scale == "paper"):
        dtype = torch.float32  # CUDA: fp32 master weights under bf16 autocast; CPU + paper preset: fp32
    stem = options.stem or f"quality_{device.type}"
    return device, dtype, stem


def write_report(path_json: Path, report: dict[str, Any]) -> None:
    out = path_json.parent
    stem = path_json.stem
    order = report["variant_order"]
    report["summary"] = summarise(report["runs"], order)
    png = out / f"{stem}_val_nll.png"
    try:
        plot_val_nll(report["runs"], order, png, title=f"user_val NLL vs step ({report['device']})")
        report["plot"] = str(png)
    except ImportError as error:  # matplotlib is a dev extra
        print(f"no plot ({error}); pip install matplotlib", file=sys.stderr)
        report["plot"] = None
    path_json.write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text(markdown(report))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    options = parse_args(argv)
    if options.threads:
        torch.set_num_threads(options.threads)
    if options.steps is None:  # --scale paper: 5 epochs of user_train
        n_train = sum(1 for _ in open(Path(options.data_dir) / "user_train.jsonl", encoding="utf-8"))
        options.steps = math.ceil(PAPER_EPOCHS * n_train / options.batch_size)
    device, dtype, stem = resolve(options)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    partial_path = out / f"{stem}.partial.json"
    recipes = load_recipes(options.variants)
    order = [r.name for r in recipes]
    signature = options.signature()

    partial: dict[str, Any] = {"signature": signature, "runs": {}}
    if partial_path.exists() and not getattr(options, "_fresh", False):
        stored = json.loads(partial_path.read_text())
        if stored.get("signature") != signature and not getattr(options, "_report_only", False):
            changed = sorted(
                k
                for k in set(signature) | set(stored.get("signature", {}))
                if signature.get(k) != stored.get("signature", {}).get(k)
            )
            raise SystemExit(
                f"{partial_path} holds runs made with other options ({changed}); "
                "pass --fresh to discard them or --out/--stem to write elsewhere"
            )
        partial = stored
    started_wall = partial.get("started_wall") or time.time()
    partial["started_wall"] = started_wall
    partial.setdefault("load_average_start", list(os.getloadavg()))

    base = None
    if not getattr(options, "_report_only", False):
        base = load_base(options, device, dtype)
        data = load_data(options, base.tokenizer)
        probe_batch = collate(data.train[: options.batch_size], base.tokenizer.pad_token_id, device)
        loss, logits = probe_logits(base.generator, probe_batch, autocast(options, device))
        probe = Probe(batch=probe_batch, generator_loss=loss, generator_logits=logits)
        partial["generator_probe_loss"] = loss
        partial["base"] = base.description
        partial["options"] = dataclasses.asdict(options)
        partial["command"] = "python bench/bench_quality.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        partial["n_train"] = len(data.train)
        partial["val_indices"], partial["gen_indices"] = data.val_indices, data.gen_indices
        todo = [(r, s) for s in options.seeds for r in recipes if f"{r.name}/{s}" not in partial["runs"]]
        print(
            f"{len(todo)} runs to do ({len(partial['runs'])} already in {partial_path}); {base.description}",
            flush=True,
        )
        from tqdm.auto import tqdm

        for recipe, seed in tqdm(todo, desc="runs", unit="run"):
            record = run_one(base, data, recipe, seed, options, device, probe)
            partial["runs"][f"{recipe.name}/{seed}"] = record
            tmp = partial_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(partial))
            tmp.replace(partial_path)
            print(
                f"{recipe.name} seed {seed}: final val NLL {record['final_val_nll']:.4f}, ROUGE-L "
                f"{record['generation']['rougeL']:.4f}, step-0 probe − generator {record['step0_probe_diff']:+.2e}, "
                f"{record['seconds']['total_s']:.0f} s",
                flush=True,
            )
    runs = [
        partial["runs"][k]
        for k in sorted(
            partial["runs"],
            key=lambda k: (
                order.index(k.split("/")[0]) if k.split("/")[0] in order else len(order),
                int(k.split("/")[1]),
            ),
        )
    ]
    report = {
        "device": device.type,
        "command": partial.get("command", "python bench/bench_quality.py"),
        "options": partial.get("options", dataclasses.asdict(options))
        if getattr(options, "_report_only", False)
        else dataclasses.asdict(options),
        "base": partial.get("base"),
        "n_train": partial.get("n_train"),
        "val_indices": partial.get("val_indices"),
        "gen_indices": partial.get("gen_indices"),
        "generator_probe_loss": partial.get("generator_probe_loss"),
        "variant_order": order + sorted({r["variant"] for r in runs} - set(order)),
        "machine": {
            **machine_info(),
            "load_average_start": partial["load_average_start"],
            "load_average_end": list(os.getloadavg()),
        },
        "versions": versions(),
        "wall_seconds": time.time() - started_wall,
        "run_seconds_sum": sum(r["seconds"]["total_s"] for r in runs),
        "runs": runs,
    }
    write_report(out / f"{stem}.json", report)
    print((out / f"{stem}.md").read_text())
    return report


if __name__ == "__main__":
    main()
