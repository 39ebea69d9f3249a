"""Fine-tuning FlyThinker (or the SFT baseline) on LongLaMP-style data with the transformers Trainer.

The Trainer brings gradient accumulation, mixed precision, checkpoints with optimizer/scheduler/RNG
state (resume after an interruption loses no step) and multi-process training: run the same
command under ``accelerate launch`` with one of the configs in ``train/accelerate/`` for DDP, FSDP
or DeepSpeed ZeRO. Methods (docs/design.md §5):

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
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from flythinker.kernels.host_memory import keep_freed_host_memory

from .checkpoints import (
    AtomicCheckpoints,
    _barrier,
    atomic_write_text,
    checkpoint_is_complete,
    publish_directory,
)
from .collators import PackingCollator, PaddingCollator
from .divergence import (
    DivergenceGuard,
    TrainingDivergedError,
    _last_good,
    guarded_trainer_class,
    non_finite_parameter,
)
from .prompts import PromptBuilder, encode_records
from .readers import read_records
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

logger = logging.getLogger(__name__)

METHODS = ("flythinker", "sft")
REASONER_MODES = ("full", "freeze", "lora")
LORA_TARGETS = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"  # peft full-matches names
MODEL_OPTION_FIELDS: tuple[str, ...] = (
    "fusion_lambda",
    "norm_eps",
    "projection",
    "fusion_gate",
    "center_reasoner",
)
RECIPE_FIELDS: tuple[str, ...] = (
    "projection",
    "fusion_gate",
    "center_reasoner",
    "lambda_warmup_steps",
    "center_reasoner_batches",
    "warm_start_lr_multiplier",
)
"""FinetuneConfig fields a ``--recipe`` fills in when they are left unset (None)."""
"""FinetuneConfig fields passed unchanged to ``FlyThinkerConfig`` (a new config option: add a field of the same
name to FinetuneConfig, its name here and its help in ``flythinker.cli.FINETUNE_HELP``; the CLI exposes it)."""


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
    recipe: str = "default"
    fusion_lambda: float = 0.5
    projection: str | None = None
    fusion_gate: str | None = None
    center_reasoner: bool | None = None
    lambda_warmup_steps: float | None = None
    center_reasoner_batches: int | None = None
    warm_start_lr_multiplier: float | None = None
    norm_eps: float = 0.0
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
    keep_freed_host_memory: bool = True
    overwrite: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def resolve_recipe(self) -> None:
        """Fill every unset (None) recipe field from ``--recipe`` (flythinker.train.recipes); explicit
        options win. For ``--method sft`` the recipe's model options do not apply (the generator alone)."""
        from .recipes import RECIPES, get_recipe

        recipes = ["default", *(name for name in RECIPES if RECIPES[name].method == "flythinker")]
        if self.recipe not in recipes:
            raise ValueError(
                f"--recipe must be one of {recipes}, got {self.recipe!r} (the SFT baseline is --method sft)"
            )
        recipe = get_recipe(self.recipe)
        values = {
            "projection": recipe.config_overrides.get("projection", "zero_pad"),
            "fusion_gate": recipe.config_overrides.get("fusion_gate", "none"),
            "center_reasoner": recipe.config_overrides.get("center_reasoner", False),
            "lambda_warmup_steps": recipe.lambda_warmup_steps,
            "center_reasoner_batches": recipe.center_reasoner_batches,
            "warm_start_lr_multiplier": recipe.gate_lr_multiplier,
        }
        for name in RECIPE_FIELDS:
            if getattr(self, name) is None:
                setattr(self, name, values[name])

    def validate(self) -> None:
        """Check every option (type, range, paths) before anything is loaded or written.

        Raises ``ValueError`` / ``FileNotFoundError`` naming the option, the value and what is allowed.
        """
        self.resolve_recipe()
        _check_choice("fusion_gate", self.fusion_gate, ("none", "scalar", "channel"))
        _check_choice("projection", self.projection, ("zero_pad", "linear", "zero_linear"))
        if not isinstance(self.center_reasoner, bool):
            raise ValueError(f"--center-reasoner must be true or false, got {self.center_reasoner!r}")
        _check_float("lambda_warmup_steps", self.lambda_warmup_steps, low=0.0,
                     hint=" (steps, or a fraction in (0, 1) of all steps; 0 = off)")  # fmt: skip
        _check_int("center_reasoner_batches", self.center_reasoner_batches, 0)
        if self.center_reasoner and self.center_reasoner_batches < 1 and self.method == "flythinker":
            raise ValueError(
                "--center-reasoner true needs --center-reasoner-batches >= 1 (batches that estimate μ)"
            )
        _check_float("warm_start_lr_multiplier", self.warm_start_lr_multiplier, low=0.0, low_open=True)
        _check_choice("method", self.method, METHODS)
        _check_choice("reasoner_mode", self.reasoner_mode, REASONER_MODES)
        _check_choice("profile_drop", self.profile_drop, ("oldest", "least_relevant"))
        for name in (
            "packing",
            "lora_generator",
            "gradient_checkpointing",
            "bf16",
            "use_fused_loss",
            "keep_freed_host_memory",
            "overwrite",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{_flag(name)} must be true or false, got {getattr(self, name)!r}")
        for name, low in (
            ("max_length", 8),
            ("max_target_tokens", 1),
            ("lora_rank", 1),
            ("lora_alpha", 1),
            ("global_batch_size", 1),
            ("per_device_batch_size", 1),
            ("logging_steps", 1),
            ("save_steps", 1),
            ("seed", 0),
        ):
            _check_int(name, getattr(self, name), low)
        for name in ("save_total_limit", "max_records"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1, hint=" (omit it for no limit)")
        if self.max_steps != -1:
            _check_int("max_steps", self.max_steps, 1, hint=" (or -1 to run the epochs)")
        _check_float("learning_rate", self.learning_rate, low=0.0, low_open=True)
        _check_float("weight_decay", self.weight_decay, low=0.0)
        _check_float("warmup_ratio", self.warmup_ratio, low=0.0, high=1.0)
        _check_float("num_train_epochs", self.num_train_epochs, low=0.0, low_open=True)
        _check_float("max_grad_norm", self.max_grad_norm, low=0.0, hint=" (0 disables clipping)")
        _check_float("fusion_lambda", self.fusion_lambda)
        _check_float("norm_eps", self.norm_eps, low=0.0)
        if self.global_batch_size < self.per_device_batch_size:
            raise ValueError(
                f"--global-batch-size ({self.global_batch_size}) must be >= --per-device-batch-size "
                f"({self.per_device_batch_size})"
            )
        if self.max_target_tokens >= self.max_length:
            raise ValueError(
                f"--max-target-tokens ({self.max_target_tokens}) must be < --max-length ({self.max_length})"
            )
        train = Path(self.train_file)
        if train.is_dir():
            raise IsADirectoryError(
                f"--train-file {self.train_file}: is a directory; expected a .jsonl, .json or .parquet file"
            )
        if not train.is_file():
            raise FileNotFoundError(f"--train-file {self.train_file}: no such file")
        from flythinker.modeling.loading import check_model_source

        check_model_source(self.generator, "--generator")
        if self.reasoner is not None:
            check_model_source(self.reasoner, "--reasoner")
        if Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise NotADirectoryError(
                f"--output-dir {self.output_dir}: is a file; expected a (new) run directory"
            )
        resume = self.resume_from_checkpoint
        if resume is not None and self.overwrite:
            raise ValueError(
                "--overwrite deletes the run's checkpoints, --resume-from-checkpoint continues from one: "
                "pass only one of them"
            )
        if resume not in (None, "last"):
            if not Path(resume).is_dir():
                raise FileNotFoundError(
                    f"--resume-from-checkpoint {resume}: no such checkpoint directory "
                    "(or pass 'last' for the newest complete one in the run directory)"
                )
            if not checkpoint_is_complete(Path(resume)):
                raise ValueError(
                    f"--resume-from-checkpoint {resume}: the checkpoint is incomplete (a run was killed "
                    "while saving it); pass 'last' to take the newest complete one"
                )

    def model_options(self) -> dict[str, Any]:
        """The FlyThinkerConfig options of this run (:data:`MODEL_OPTION_FIELDS`)."""
        return {name: getattr(self, name) for name in MODEL_OPTION_FIELDS}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{_flag(name)} must be one of {', '.join(allowed)}; got {value!r}")


def _check_int(name: str, value: Any, low: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{_flag(name)} must be an integer >= {low}{hint}; got {value!r}")


def _check_float(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    hint: str = "",
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"<= {high:g}")
        allowed = "a finite number" + (" " + " and ".join(bounds) if bounds else "")
        raise ValueError(f"{_flag(name)} must be {allowed}{hint}; got {value!r}")


def load_tokenizer(path: str):
    """The generator's tokenizer, with SmolLM2's end-of-turn fix and a pad token."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.eos_token == "<|im_start|>" and "<|im_end|>" in tokenizer.get_vocab():
        tokenizer.eos_token = "<|im_end|>"  # docs/design.md §7: the GGUF metadata names the wrong token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _is_flythinker_checkpoint(path: str) -> bool:
    return Path(path, "config.json").exists() and AutoConfig.from_pretrained(path).model_type == "flythinker"


def build_model(config: FinetuneConfig, tokenizer, dtype: torch.dtype = torch.float32):
    """The model to train: a FlyThinker from two checkpoints (or a saved FlyThinker), or the bare generator."""
    from flythinker.modeling.modeling_flythinker import FlyThinkerForCausalLM

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
            **config.model_options(),
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

    lora = LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=LORA_TARGETS, lora_dropout=0.0
    )
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
            setattr(
                model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer()
            )
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
            logs["real_tokens_per_second"] = round(
                (self.counter.real_tokens - self.tokens_at_start) / elapsed, 2
            )


# ------------------------------------------------------------------------------------------ data
def prepare_dataset(config: FinetuneConfig, tokenizer, records=None) -> list[dict[str, Any]]:
    if records is None:
        records = read_training_records(config)
    builder = PromptBuilder(
        tokenizer,
        max_length=config.max_length,
        max_target_tokens=config.max_target_tokens,
        profile_drop=config.profile_drop,
    )
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


def check_model_options(config: FinetuneConfig) -> None:
    """Build the FlyThinkerConfig of this run from the two base configs (cheap), so its own validation
    (λ, projection, widths) fails before anything is loaded or written."""
    if config.method != "flythinker" or _is_flythinker_checkpoint(config.generator):
        return
    from flythinker.modeling.configuration_flythinker import FlyThinkerConfig

    generator = AutoConfig.from_pretrained(config.generator)
    reasoner = AutoConfig.from_pretrained(config.reasoner or config.generator)
    try:
        FlyThinkerConfig(generator_config=generator, reasoner_config=reasoner, **config.model_options())
    except (TypeError, ValueError) as error:
        flags = ", ".join(_flag(name) for name in MODEL_OPTION_FIELDS)
        raise ValueError(f"model options ({flags}): {error}") from error


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


def _loading(what: str, load):
    """Run ``load()``; a failure to read a model or tokenizer becomes one ``ValueError`` naming ``what``."""
    from flythinker.modeling.loading import CheckpointMismatchError

    try:
        return load()
    except (CheckpointMismatchError, TrainingDivergedError):
        raise
    except ValueError as error:
        if str(error).startswith("model options"):
            raise
        raise ValueError(f"{what}: {' '.join(str(error).split())}") from error
    except Exception as error:  # noqa: BLE001 - transformers / safetensors / hub errors of many types
        raise ValueError(
            f"{what}: cannot load it: {type(error).__name__}: {' '.join(str(error).split())}"
        ) from error


def run_finetune(
    config: FinetuneConfig,
    callbacks: list[TrainerCallback] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, save the final model (adapters merged) + tokenizer to ``<output_dir>/model``; return metrics.

    Everything is validated (options, run directory, data, model configs, the models themselves) before
    the first file is written. Run directory: ``options.json`` (``options``, when given),
    ``finetune_config.json``, ``checkpoints/checkpoint-N`` (complete, resumable), ``model/`` (loads with
    ``from_pretrained``), ``train_metrics.json`` (written last: the run is finished), ``log_history.json``.
    Checkpoints and ``model/`` are written under temporary names and renamed when complete. A non-finite
    loss, gradient norm or weight stops the run with :class:`TrainingDivergedError` naming the step.
    """
    config.validate()
    check_run_directory(config)
    if config.keep_freed_host_memory and not torch.cuda.is_available():
        keep_freed_host_memory()  # CPU steps reuse freed memory instead of faulting in fresh pages
    records = read_training_records(config)
    models = f"--generator {config.generator}" + (
        f" / --reasoner {config.reasoner}" if config.reasoner else ""
    )
    _loading(models, lambda: check_model_options(config))
    torch.manual_seed(config.seed)
    tokenizer = _loading(
        f"--generator {config.generator} (its tokenizer)", lambda: load_tokenizer(config.generator)
    )
    dataset = prepare_dataset(config, tokenizer, records)
    dtype = torch.bfloat16 if config.bf16 and not torch.cuda.is_available() else torch.float32
    model = _loading(models, lambda: build_model(config, tokenizer, dtype=dtype))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    args = training_arguments(config, world_size)
    resume = resolve_resume(config)

    # ---- nothing was written before this line
    out = Path(config.output_dir)
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        if config.overwrite:
            clear_run_directory(config)
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging_dir(config), ignore_errors=True)  # a save killed half-way
        for stale in [*out.glob(".model.partial-*"), *out.glob(".model.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        if options is not None:
            atomic_write_text(out / "options.json", json.dumps(options, indent=2, default=str))
        atomic_write_text(out / "finetune_config.json", json.dumps(asdict(config), indent=2))
    _barrier()
    if config.packing:
        collator = PackingCollator(config.max_length * config.per_device_batch_size, tokenizer.pad_token_id)
    else:
        collator = PaddingCollator(tokenizer.pad_token_id, padding_side="right")
    counter = CountingCollator(collator)
    trainer = guarded_trainer_class()(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=counter,
        processing_class=tokenizer,
        checkpoints=checkpoints_dir(config),
        warm_start_lr_multiplier=config.warm_start_lr_multiplier if config.method == "flythinker" else 1.0,
        callbacks=[
            MeanNormAndThroughputCallback(counter),
            DivergenceGuard(checkpoints_dir(config)),
            AtomicCheckpoints(checkpoints_dir(config), config.save_total_limit),
            *warm_start_callbacks(config),
            *(callbacks or []),
        ],
    )
    if config.method == "flythinker" and config.center_reasoner and resume is None:
        estimate_center(model, dataset, collator, config)
    try:
        if resume is not None and checkpoint_is_final(Path(resume), args):
            # killed after the last checkpoint (e.g. while writing model/): nothing is left to train, and
            # Trainer.train would run one step past max_steps
            metrics = load_final_checkpoint(model, Path(resume), trainer)
        else:
            metrics = dict(trainer.train(resume_from_checkpoint=resume).metrics)
    finally:
        if is_main:
            shutil.rmtree(staging_dir(config), ignore_errors=True)
    metrics["global_step"] = trainer.state.global_step
    metrics["world_size"] = trainer.args.world_size
    metrics["real_tokens"] = counter.real_tokens
    metrics["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainer.is_world_process_zero():
        merged = merge_adapters(model)
        if merged:
            logger.info("merged %d LoRA layers into their base weights", merged)
        bad = non_finite_parameter(model)
        if bad is not None:
            raise TrainingDivergedError(
                f"refusing to save non-finite final weights ({bad} holds NaN/inf); "
                f"{_last_good(checkpoints_dir(config))}"
            )
        staged = out / f".model.partial-{os.getpid()}"
        shutil.rmtree(staged, ignore_errors=True)
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        publish_directory(staged, out / "model")
        atomic_write_text(out / "log_history.json", json.dumps(trainer.state.log_history, indent=2))
        atomic_write_text(out / FINISHED_MARKER, json.dumps(metrics, indent=2))
    return metrics
