"""``flythinker train``: fine-tune FlyThinker or the SFT baseline (:func:`flythinker.train.finetune.run_finetune`)."""

from __future__ import annotations

import argparse
import dataclasses
import json

from .common import add_dataclass_options

FINETUNE_HELP = {
    "train_file": "LongLaMP-style training data: .jsonl, .json or .parquet (LongLaMP records or the reference "
    "implementation's {inp, profile, target} records)",
    "output_dir": "run directory: checkpoints/, model/ (loads with from_pretrained), metrics and logs",
    "generator": "generator checkpoint directory (any transformers causal LM), or a saved FlyThinker to continue",
    "reasoner": "reasoner checkpoint directory (default: the generator checkpoint)",
    "method": "'flythinker' (generator + reasoner) or 'sft' (the generator alone: the baseline, same prompts)",
    "task": "LongLaMP task (abstract_generation, product_review, topic_writing, reference); default: detected",
    "max_length": "maximum tokens of one training example; the profile is truncated first",
    "max_target_tokens": "the target is cut to this many tokens (plus the end-of-turn token)",
    "profile_drop": "which profile items go first when the prompt is too long: 'oldest' or 'least_relevant'",
    "packing": "pack several examples per row (position ids restart; the injection is zeroed at each start)",
    "recipe": "training recipe (flythinker.train.recipes): 'default' (zero_linear: step 0 is exactly the generator; "
    "chosen by a rule written before the runs, bench/results/quality_cpu.md, which did not show the reasoner's "
    "information to help at its scale), 'paper' (the paper's untrained λ injection), or a warm-start variant "
    "(gate_scalar, gate_channel, lambda_warmup, center, zero_linear, gate_center, gated); the options below override it",
    "fusion_lambda": "λ, the weight of the injected reasoner state (unset: 0.5, the paper's, or a saved FlyThinker's own)",
    "fusion_gate": "learned gate c = tanh(α), α = 0 at start: 'none', 'scalar' or 'channel' (default: from --recipe)",
    "center_reasoner": "subtract the mean reasoner state μ (estimated on training batches) before the rescale "
    "(default: from --recipe)",
    "lambda_warmup_steps": "ramp λ from 0 over this many optimizer steps (a fraction in (0, 1): of all steps; "
    "0 = off; default: from --recipe)",
    "center_reasoner_batches": "training batches that estimate μ for --center-reasoner (default: from --recipe)",
    "warm_start_lr_multiplier": "learning-rate multiplier of the gate α / zero_linear W, without weight decay "
    "(default: from --recipe)",
    "projection": "'zero_pad' (h fills the first d_R channels; needs d_R <= d_G), 'linear' (a learned "
    "Linear(d_R, d_G) before the rescale) or 'zero_linear' (a zero-initialised Linear after it); a reasoner "
    "wider than the generator needs one of the last two (default: from --recipe)",
    "projection_init_std": "start zero_linear's W ~ N(0, std²) instead of 0 (needs a --fusion-gate, whose closed "
    "start keeps step 0 exact; default: from --recipe)",
    "reasoner_context": "the reasoner reads profile + prompt, the generator only the prompt (with at most "
    "--profile-tokens of profile); both left-padded, right ends aligned (docs/reasoner_context.md); no --packing",
    "profile_tokens": "at most this many profile tokens in the generator's prompt (0: none; default: as many as fit)",
    "norm_eps": "lower bound on the reasoner-state norm ‖h‖ (unset: 0, which reproduces the paper's equations, or a "
    "saved FlyThinker's own)",
    "reasoner_mode": "'full' (train the reasoner), 'freeze', or 'lora' (peft LoRA adapters on the reasoner); "
    "default: from --recipe ('freeze' for the default zero_linear, as the quality experiment measured it; 'full' "
    "for the others)",
    "lora_generator": "also train the generator through LoRA adapters instead of fully",
    "lora_rank": "LoRA rank r",
    "lora_alpha": "LoRA alpha",
    "learning_rate": "peak learning rate (paper: 5e-6)",
    "weight_decay": "AdamW weight decay (paper: 0.025)",
    "warmup_ratio": "fraction of steps with linear warm-up (paper: 0.01)",
    "num_train_epochs": "epochs (paper: 5); ignored when --max-steps > 0",
    "max_steps": "stop after this many optimizer steps (-1: run the epochs)",
    "global_batch_size": "examples per optimizer step over all processes (paper: 64); gradient accumulation fills it",
    "per_device_batch_size": "examples per forward pass on one process",
    "max_grad_norm": "gradient clipping norm (paper: 1.0)",
    "gradient_checkpointing": "recompute activations in backward to save memory",
    "bf16": "train in bfloat16 mixed precision",
    "seed": "random seed (data order, initialisation of new parameters)",
    "logging_steps": "log loss, learning rate and real tokens/s every this many steps",
    "save_steps": "write a resumable checkpoint every this many steps",
    "save_total_limit": "keep at most this many checkpoints",
    "resume_from_checkpoint": "checkpoint directory to resume from, or 'last' for the newest in output_dir",
    "max_records": "use only the first N training records",
    "attn_implementation": "'sdpa' (default), 'eager' or 'flash_attention_2' (needs flash-attn installed)",
    "use_fused_loss": "compute the loss with the chunked fused linear cross-entropy (never builds [tokens, vocab])",
    "keep_freed_host_memory": "on CPU, tune glibc malloc to reuse freed memory instead of faulting in fresh "
    "pages every step (flythinker.kernels.host_memory; resident memory stays at its peak)",
    "overwrite": "replace a run directory that already holds a run (default: refuse, so no run is lost)",
}


def run(args: argparse.Namespace) -> int:
    from flythinker.train.finetune import FinetuneConfig, run_finetune

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig) if f.name != "extra"}
    config = FinetuneConfig(**values)
    metrics = run_finetune(config, options=values)  # writes options.json once everything is validated
    print(json.dumps(metrics, indent=2))
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    """Register the command on the ``flythinker`` subparsers."""
    from flythinker.train.finetune import FinetuneConfig

    train = sub.add_parser(
        "train",
        help="fine-tune FlyThinker or the SFT baseline (transformers Trainer; "
        "run under `accelerate launch` for DDP/FSDP/DeepSpeed)",
    )
    add_dataclass_options(train, FinetuneConfig, FINETUNE_HELP)
    train.set_defaults(func=run)
    return train
