"""Fine-tuning FlyThinker (or the SFT baseline) on LongLaMP-style data with the transformers Trainer.

The Trainer brings gradient accumulation, mixed precision, checkpoints with optimizer/scheduler/RNG
state (resume after an interruption loses no step) and multi-process training: run the same
command under ``accelerate launch`` with one of the configs in ``configs/accelerate/`` for DDP, FSDP
or DeepSpeed ZeRO. Methods (docs/design.md §5):

* ``flythinker`` — generator + reasoner, trained by the generator's loss only;
* ``sft`` — the generator alone, on the same data and the same prompts, so results compare.

Paper defaults: lr 5e-6, weight decay 0.025, warmup 1 %, linear decay, global batch 64, 5 epochs,
λ 0.5, gradient clipping 1.0. m̄ is refreshed after every optimizer step (the model also
refreshes it lazily whenever the embedding table's version counter moves).

The options live in :mod:`.finetune_config`, the model in :mod:`.model_setup`, the run directory's rules in
:mod:`.run_directory` (lock: :mod:`.run_lock`, resume checks: :mod:`.provenance`) and the final save in
:mod:`.final_save`; docs/reliability.md states what a run directory guarantees.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from flythinker.kernels.host_memory import keep_freed_host_memory

from .checkpoints import AtomicCheckpoints, _barrier, atomic_write_text
from .collators import PackingCollator, PaddingCollator
from .divergence import DivergenceGuard, TrainingDivergedError, guarded_trainer_class  # noqa: F401
from .final_save import no_space_error, save_final_model
from .finetune_config import (  # noqa: F401  (re-exported: the public names of a fine-tuning run)
    MODEL_OPTION_FIELDS,
    RECIPE_FIELDS,
    FinetuneConfig,
)
from .model_setup import (  # noqa: F401  (re-exported)
    apply_adapters,
    build_model,
    check_model_options,
    load_or_explain,
    load_tokenizer,
    merge_adapters,
)
from .prompts import PromptBuilder, encode_records
from .provenance import PROVENANCE_FILE, check_resume_matches, provenance
from .readers import read_records
from .reasoner_context import ReasonerContextBuilder, ReasonerContextCollator
from .run_directory import (
    FINISHED_MARKER,
    check_run_directory,
    checkpoint_is_final,
    checkpoints_dir,
    clear_run_directory,
    load_final_checkpoint,
    resolve_resume,
    staging_dir,
)
from .run_lock import RunLock


class RealTokens:
    """Real (label) tokens trained on by this process; :meth:`total` sums them over every rank."""

    def __init__(self):
        self.value = 0

    def add(self, inputs: dict[str, Any]) -> None:
        labels = inputs.get("labels")
        if labels is not None:
            self.value += int((labels != -100).sum())

    def total(self) -> int:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            count = torch.tensor([self.value], dtype=torch.long)
            if torch.distributed.get_backend() == "nccl":
                count = count.cuda()
            torch.distributed.all_reduce(count)
            return int(count.item())
        return self.value


class MeanNormAndThroughputCallback(TrainerCallback):
    """Refreshes m̄ after every optimizer step and logs this process's real tokens/s (whole run so far)."""

    def __init__(self, counter: RealTokens):
        self.counter = counter
        self.start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()
        self.tokens_at_start = self.counter.value

    def on_step_end(self, args, state, control, model=None, **kwargs):
        refresh = getattr(model, "refresh_mean_embedding_norm", None)
        if refresh is not None:
            refresh(force=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self.start is not None:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            rate = (self.counter.value - self.tokens_at_start) / elapsed * args.world_size  # ranks are alike
            logs["real_tokens_per_second"] = round(rate, 2)


# ------------------------------------------------------------------------------------------ data
def prepare_dataset(config: FinetuneConfig, tokenizer, records=None) -> list[dict[str, Any]]:
    if records is None:
        records = read_training_records(config)
    builder = PromptBuilder(
        tokenizer,
        max_length=config.max_length,
        max_target_tokens=config.max_target_tokens,
        profile_drop=config.profile_drop,
        profile_tokens=config.profile_tokens,
    )
    if config.reasoner_context:
        builder = ReasonerContextBuilder(builder)
    return encode_records(records, builder, desc=f"encoding {Path(config.train_file).name}")


def read_training_records(config: FinetuneConfig):
    """The training records (first ``max_records``); an empty file is an error here, not deep in the Trainer."""
    records = read_records(config.train_file, task=config.task)
    if config.max_records is not None:
        records = records[: config.max_records]
    if not records:
        raise ValueError(
            f"--train-file {config.train_file}: holds no records; training needs at least one "
            "(LongLaMP-style JSONL: one object per line)"
        )
    return records


def training_arguments(config: FinetuneConfig, world_size: int):
    from transformers import TrainingArguments

    per_step = config.per_device_batch_size * world_size
    accumulation = max(1, math.ceil(config.global_batch_size / per_step))
    optional = {"gradient_checkpointing": True} if config.gradient_checkpointing else {}
    return TrainingArguments(
        **optional,
        output_dir=str(staging_dir(config)),  # AtomicCheckpoints renames finished ones into checkpoints/
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
        logging_nan_inf_filter=False,  # never hide a NaN loss (the DivergenceGuard stops the run anyway)
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=None,  # rotation happens among complete checkpoints (AtomicCheckpoints)
        remove_unused_columns=False,
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if world_size > 1 and not torch.cuda.is_available() else None,
        disable_tqdm=False,
    )


def warm_start_callbacks(config: FinetuneConfig) -> list[TrainerCallback]:
    """The λ warm-up of the recipe (none for SFT or without a warm-up)."""
    if config.method != "flythinker" or not config.lambda_warmup_steps:
        return []
    from .warm_start import LambdaWarmupCallback

    return [LambdaWarmupCallback(config.lambda_warmup_steps)]


def estimate_center(model, dataset, collator, config: FinetuneConfig) -> None:
    """μ from the first ``center_reasoner_batches`` batches of the training data, before step 0
    (on resume, μ comes back with the checkpoint's weights)."""
    from .warm_start import estimate_reasoner_center

    size = config.per_device_batch_size
    batches = (collator(dataset[i : i + size]) for i in range(0, len(dataset), size))
    estimate_reasoner_center(model, batches, max_batches=config.center_reasoner_batches)


def run_finetune(
    config: FinetuneConfig,
    callbacks: list[TrainerCallback] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, save the final model (adapters merged) + tokenizer to ``<output_dir>/model``; return metrics.

    Everything is validated (options, run directory, data, model configs, the models themselves, and on
    resume that options and data equal the stored run's) before the first file is written. The run holds
    an exclusive lock on ``output_dir`` until it returns. Run directory: ``options.json`` (``options``, when
    given), ``finetune_config.json`` (the options as resolved: what ran), ``provenance.json`` (the data's
    SHA-256), ``checkpoints/checkpoint-N`` (complete, resumable), ``model/`` (loads with ``from_pretrained``;
    reloaded and compared before it is published), ``log_history.json``, ``train_metrics.json`` (written
    last: the run is finished). A non-finite loss, gradient norm or weight stops the run with
    :class:`~flythinker.train.divergence.TrainingDivergedError` naming the step.
    """
    config.validate()
    check_run_directory(config)
    if config.keep_freed_host_memory and not torch.cuda.is_available():
        keep_freed_host_memory()  # CPU steps reuse freed memory instead of faulting in fresh pages
    records = read_training_records(config)
    data = provenance(config)
    models = f"--generator {config.generator}" + (
        f" / --reasoner {config.reasoner}" if config.reasoner else ""
    )
    load_or_explain(models, lambda: check_model_options(config))
    resume = resolve_resume(config)
    if config.resume_from_checkpoint is not None:
        check_resume_matches(config, resume, data)
    torch.manual_seed(config.seed)
    tokenizer = load_or_explain(
        f"--generator {config.generator} (its tokenizer)", lambda: load_tokenizer(config.generator)
    )
    dataset = prepare_dataset(config, tokenizer, records)
    dtype = torch.bfloat16 if config.bf16 and not torch.cuda.is_available() else torch.float32
    model = load_or_explain(models, lambda: build_model(config, tokenizer, dtype=dtype))
    args = training_arguments(config, int(os.environ.get("WORLD_SIZE", "1")))

    # ---- nothing was written before this line
    out = Path(config.output_dir)
    is_main = int(os.environ.get("RANK", "0")) == 0
    with RunLock(out) if is_main else contextlib.nullcontext():
        if is_main:
            check_run_directory(config)  # again, under the lock: another run may have finished meanwhile
            _start_run_files(config, options, data)
        _barrier()
        return _train(config, model, tokenizer, dataset, args, resume, callbacks, is_main)


def _start_run_files(config: FinetuneConfig, options: dict[str, Any] | None, data: dict[str, Any]) -> None:
    out = Path(config.output_dir)
    if config.overwrite:
        clear_run_directory(config)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging_dir(config), ignore_errors=True)  # a save killed half-way
    for stale in [*out.glob(".model.partial-*"), *out.glob(".model.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    if options is not None:
        atomic_write_text(out / "options.json", json.dumps(options, indent=2, default=str))
    atomic_write_text(out / "finetune_config.json", json.dumps(asdict(config), indent=2))
    atomic_write_text(out / PROVENANCE_FILE, json.dumps(data, indent=2))


def _train(config, model, tokenizer, dataset, args, resume, callbacks, is_main) -> dict[str, Any]:
    out = Path(config.output_dir)
    if config.reasoner_context:
        collator = ReasonerContextCollator(tokenizer.pad_token_id)
    elif config.packing:
        collator = PackingCollator(config.max_length * config.per_device_batch_size, tokenizer.pad_token_id)
    else:
        collator = PaddingCollator(tokenizer.pad_token_id, padding_side="right")
    counter = RealTokens()
    trainer = guarded_trainer_class()(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        checkpoints=checkpoints_dir(config),
        real_tokens=counter,
        warm_start_lr_multiplier=config.warm_start_lr_multiplier if config.method == "flythinker" else 1.0,
        callbacks=[
            MeanNormAndThroughputCallback(counter),
            DivergenceGuard(checkpoints_dir(config)),
            AtomicCheckpoints(checkpoints_dir(config), config.save_total_limit),
            *warm_start_callbacks(config),
            *(callbacks or []),
        ],
    )
    if (
        config.method == "flythinker"
        and config.center_reasoner
        and config.center_reasoner_batches
        and resume is None
    ):
        estimate_center(model, dataset, collator, config)
    try:
        if resume is not None and checkpoint_is_final(Path(resume), args):
            # killed after the last checkpoint (e.g. while writing model/): nothing is left to train, and
            # Trainer.train would run one step past max_steps
            metrics = load_final_checkpoint(model, Path(resume), trainer)
        else:
            metrics = dict(trainer.train(resume_from_checkpoint=resume).metrics)
    except OSError as error:
        if error.filename is not None and error.errno != errno.ENOSPC:
            raise
        raise no_space_error(error, staging_dir(config), "a checkpoint") from error
    finally:
        if is_main:
            shutil.rmtree(staging_dir(config), ignore_errors=True)
    metrics["global_step"] = trainer.state.global_step
    metrics["world_size"] = trainer.args.world_size
    metrics["parallelism"] = str(
        getattr(trainer.accelerator.distributed_type, "value", "NO")
    )  # FSDP, DEEPSPEED...
    metrics["real_tokens"] = counter.total()
    if "train_runtime" in metrics and metrics["train_runtime"]:
        metrics["real_tokens_per_second"] = round(metrics["real_tokens"] / metrics["train_runtime"], 2)
    # ZeRO-3 leaves each rank an empty local tensor and records the full size as ds_numel
    metrics["trainable_parameters"] = sum(
        getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad
    )
    save_final_model(trainer, model, tokenizer, out, checkpoints_dir(config))
    if trainer.is_world_process_zero():
        atomic_write_text(out / "log_history.json", json.dumps(trainer.state.log_history, indent=2))
        atomic_write_text(out / FINISHED_MARKER, json.dumps(metrics, indent=2))
    return metrics
