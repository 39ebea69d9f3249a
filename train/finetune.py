"""Fine-tuning FlyThinker (or the SFT baseline) on LongLaMP-style data with the transformers Trainer.

The Trainer brings gradient accumulation, mixed precision, checkpoints with optimizer/scheduler/RNG
state (resume after an interruption loses no step) and multi-process training: run the same
command under ``accelerate launch`` with one of the configs in ``train/accelerate/`` for DDP, FSDP
or DeepSpeed ZeRO. Methods (DESIGN §5):

* ``flythinker`` — generator + reasoner, trained by the generator's loss only;
* ``sft`` — the generator alone, on the same data and the same prompts, so results compare.

Paper defaults: lr 5e-6, weight decay 0.025, warmup 1 %, linear decay, global batch 64, 5 epochs,
λ 0.5, gradient clipping 1.0. m̄ is refreshed after every optimizer step (the model also
refreshes it lazily whenever the embedding table's version counter moves).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from .collators import PackingCollator, PaddingCollator
from .prompts import PromptBuilder, encode_records
from .readers import read_records

logger = logging.getLogger(__name__)

METHODS = ("flythinker", "sft")
REASONER_MODES = ("full", "freeze", "lora")
LORA_TARGETS = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"  # peft full-matches names


@dataclass
class FinetuneConfig:
    """Everything one training run needs; saved as ``finetune_config.json`` in the run directory."""

    train_file: str
    output_dir: str
    generator: str
    reasoner: str | None = None  # default: the generator checkpoint
    method: str = "flythinker"
    task: str | None = None
    max_length: int = 2048
    max_target_tokens: int = 512
    profile_drop: str = "oldest"
    packing: bool = False
    fusion_lambda: float = 0.5
    reasoner_mode: str = "full"
    lora_generator: bool = False
    lora_rank: int = 16
    lora_alpha: int = 32
    learning_rate: float = 5e-6
    weight_decay: float = 0.025
    warmup_ratio: float = 0.01
    num_train_epochs: float = 5.0
    max_steps: int = -1
    global_batch_size: int = 64
    per_device_batch_size: int = 1
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    bf16: bool = False
    seed: int = 42
    logging_steps: int = 1
    save_steps: int = 50
    save_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None
    max_records: int | None = None
    attn_implementation: str = "sdpa"
    use_fused_loss: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.reasoner_mode not in REASONER_MODES:
            raise ValueError(f"reasoner_mode must be one of {REASONER_MODES}, got {self.reasoner_mode!r}")
        if self.global_batch_size < self.per_device_batch_size:
            raise ValueError("global_batch_size must be >= per_device_batch_size")
        if not Path(self.train_file).exists():
            raise FileNotFoundError(f"train_file {self.train_file} does not exist")


def load_tokenizer(path: str):
    """The generator's tokenizer, with SmolLM2's end-of-turn fix and a pad token."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.eos_token == "<|im_start|>" and "<|im_end|>" in tokenizer.get_vocab():
        tokenizer.eos_token = "<|im_end|>"  # DESIGN §7: the GGUF metadata names the wrong token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _is_flythinker_checkpoint(path: str) -> bool:
    return Path(path, "config.json").exists() and AutoConfig.from_pretrained(path).model_type == "flythinker"


def build_model(config: FinetuneConfig, tokenizer, dtype: torch.dtype = torch.float32):
    """The model to train: a FlyThinker from two checkpoints (or a saved FlyThinker), or the bare generator."""
    from flythinker.modeling import FlyThinkerForCausalLM

    if config.method == "sft":
        model = AutoModelForCausalLM.from_pretrained(
            config.generator, dtype=dtype, attn_implementation=config.attn_implementation
        )
    elif _is_flythinker_checkpoint(config.generator):
        model = FlyThinkerForCausalLM.from_pretrained(
            config.generator, dtype=dtype, attn_implementation=config.attn_implementation
        )
    else:
        model = FlyThinkerForCausalLM.from_components(
            generator=config.generator,
            reasoner=config.reasoner or config.generator,
            fusion_lambda=config.fusion_lambda,
            dtype=dtype,
            attn_implementation=config.attn_implementation,
            tokenizer=tokenizer,
            use_fused_loss=config.use_fused_loss,
        )
    apply_adapters(model, config)
    return model


def apply_adapters(model, config: FinetuneConfig) -> None:
    """Freeze or LoRA-adapt the reasoner, optionally LoRA the generator (peft, injected in place so the
    model stays a plain FlyThinker and its checkpoints stay loadable)."""
    is_flythinker = config.method == "flythinker"
    if is_flythinker and config.reasoner_mode == "freeze":
        model.reasoner.requires_grad_(False)
    targets = []
    if is_flythinker and config.reasoner_mode == "lora":
        targets.append(model.reasoner)
    if config.lora_generator:
        targets.append(model.generator if is_flythinker else model)
    if not targets:
        return
    from peft import LoraConfig, inject_adapter_in_model

    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=LORA_TARGETS, lora_dropout=0.0)
    for module in targets:
        inject_adapter_in_model(lora, module)


def merge_adapters(model) -> int:
    """Merge every injected LoRA layer into its base weight and remove the wrapper; returns how many."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return 0
    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
            merged += 1
    return merged


class CountingCollator:
    """Wraps a collator and counts real (non-pad) tokens, for throughput in real tokens per second."""

    def __init__(self, collator):
        self.collator = collator
        self.real_tokens = 0

    def __call__(self, features):
        self.real_tokens += sum(len(f["input_ids"]) for f in features)
        return self.collator(features)


class MeanNormAndThroughputCallback(TrainerCallback):
    """Refreshes m̄ after every optimizer step and logs real tokens/s (whole run so far)."""

    def __init__(self, counter: CountingCollator):
        self.counter = counter
        self.start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()
        self.tokens_at_start = self.counter.real_tokens

    def on_step_end(self, args, state, control, model=None, **kwargs):
        refresh = getattr(model, "refresh_mean_embedding_norm", None)
        if refresh is not None:
            refresh(force=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self.start is not None:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            logs["real_tokens_per_second"] = round((self.counter.real_tokens - self.tokens_at_start) / elapsed, 2)


def prepare_dataset(config: FinetuneConfig, tokenizer) -> list[dict[str, Any]]:
    records = read_records(config.train_file, task=config.task)
    if config.max_records is not None:
        records = records[: config.max_records]
    builder = PromptBuilder(
        tokenizer,
        max_length=config.max_length,
        max_target_tokens=config.max_target_tokens,
        profile_drop=config.profile_drop,
    )
    return encode_records(records, builder, desc=f"encoding {Path(config.train_file).name}")


def training_arguments(config: FinetuneConfig, world_size: int):
    from transformers import TrainingArguments

    per_step = config.per_device_batch_size * world_size
    accumulation = max(1, math.ceil(config.global_batch_size / per_step))
    optional = {"gradient_checkpointing": True} if config.gradient_checkpointing else {}
    return TrainingArguments(
        **optional,
        output_dir=str(Path(config.output_dir) / "checkpoints"),
        per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # a float < 1 is a fraction of the total steps
        lr_scheduler_type="linear",
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        max_grad_norm=config.max_grad_norm,
        bf16=config.bf16,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        remove_unused_columns=False,
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if world_size > 1 and not torch.cuda.is_available() else None,
        disable_tqdm=False,
    )


def run_finetune(config: FinetuneConfig, callbacks: list[TrainerCallback] | None = None) -> dict[str, Any]:
    """Train, save the final model (adapters merged) + tokenizer to ``<output_dir>/model``; return metrics.

    Run directory: ``finetune_config.json``, ``checkpoints/checkpoint-N`` (resumable),
    ``model/`` (loads with ``from_pretrained``), ``train_metrics.json``, ``log_history.json``.
    """
    from transformers import Trainer

    config.validate()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "finetune_config.json").write_text(json.dumps(asdict(config), indent=2))
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(config.generator)
    dataset = prepare_dataset(config, tokenizer)
    dtype = torch.bfloat16 if config.bf16 and not torch.cuda.is_available() else torch.float32
    model = build_model(config, tokenizer, dtype=dtype)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    args = training_arguments(config, world_size)
    if config.packing:
        collator = PackingCollator(config.max_length * config.per_device_batch_size, tokenizer.pad_token_id)
    else:
        collator = PaddingCollator(tokenizer.pad_token_id, padding_side="right")
    counter = CountingCollator(collator)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=counter,
        processing_class=tokenizer,
        callbacks=[MeanNormAndThroughputCallback(counter), *(callbacks or [])],
    )
    resume = config.resume_from_checkpoint
    if resume == "last":
        resume = True
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(result.metrics)
    metrics["global_step"] = trainer.state.global_step
    metrics["world_size"] = trainer.args.world_size
    metrics["real_tokens"] = counter.real_tokens
    metrics["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainer.is_world_process_zero():
        merged = merge_adapters(model)
        if merged:
            logger.info("merged %d LoRA layers into their base weights", merged)
        model.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
        (out / "train_metrics.json").write_text(json.dumps(metrics, indent=2))
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=2))
    return metrics
