"""Building what a fine-tuning run trains: the tokenizer, the model (a FlyThinker from two checkpoints, a
saved FlyThinker, or the bare generator for SFT) with its adapters, and merging the adapters at the end."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .divergence import TrainingDivergedError
from .finetune_config import MODEL_OPTION_FIELDS, FinetuneConfig, _flag
from .warm_start import init_projection

LORA_TARGETS = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"  # peft full-matches names


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
        if config.projection_init_std:
            init_projection(model, config.projection_init_std)
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


def load_or_explain(what: str, load):
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
