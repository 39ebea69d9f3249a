"""The final save of a fine-tuning run: gather the full weights, write ``model/`` under a temporary name,
reload it and compare, then publish it by rename.

Under ZeRO-3 or FSDP every rank holds a shard; saving the wrapped model's own parameters writes empty
tensors. :func:`full_state_dict` gathers the full state dict through ``accelerator.get_state_dict`` (a
collective: every rank calls it). :func:`verify_saved_model` reloads the written folder and compares a logit
probe with the trained model (or, when the trained model is sharded, every tensor with the gathered state
dict); a mismatch fails the run before ``model/`` is published.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from .checkpoints import publish_directory
from .divergence import TrainingDivergedError, _last_good, non_finite_parameter
from .model_setup import merge_adapters

logger = logging.getLogger(__name__)

PROBE_TOLERANCE = 1e-4
"""Largest |Δlogit| between the trained model and its reloaded copy (the same weights: ~0 in practice)."""


class SavedModelMismatchError(RuntimeError):
    """The written ``model/`` does not reload to the trained weights; it was not published."""


def is_sharded(trainer) -> bool:
    """Whether the trained model's parameters are split across ranks (ZeRO-3 or FSDP)."""
    return bool(getattr(trainer, "is_deepspeed_enabled", False) and _zero_stage(trainer) == 3) or bool(
        getattr(trainer, "is_fsdp_enabled", False)
    )


def _zero_stage(trainer) -> int:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return int(getattr(plugin, "zero_stage", 0) or 0) if plugin is not None else 0


def full_state_dict(trainer) -> dict[str, torch.Tensor] | None:
    """The gathered full state dict of a sharded model (call on every rank), or None when not sharded."""
    if not is_sharded(trainer):
        return None
    return trainer.accelerator.get_state_dict(trainer.model_wrapped)


def no_space_error(error: OSError, path: Path, what: str) -> OSError:
    """``error`` as one line naming ``path`` (a full disk names no file of its own)."""
    cause = error.strerror or str(error)
    hint = "; free space on that disk or choose another --output-dir" if error.errno == errno.ENOSPC else ""
    return OSError(error.errno, f"{path}: cannot write {what}: {cause}{hint}")


def save_final_model(trainer, model, tokenizer, out: Path, checkpoints: Path) -> None:
    """Write ``out/model`` (adapters merged, weights verified); every rank calls it."""
    state_dict = full_state_dict(trainer)
    if not trainer.is_world_process_zero():
        return
    if state_dict is None:
        merged = merge_adapters(model)
        if merged:
            logger.info("merged %d LoRA layers into their base weights", merged)
        bad = non_finite_parameter(model)
    else:
        bad = next(
            (k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()), None
        )
    if bad is not None:
        raise TrainingDivergedError(
            f"refusing to save non-finite final weights ({bad} holds NaN/inf); {_last_good(checkpoints)}"
        )
    staged = out / f".model.partial-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    try:
        model.save_pretrained(staged, state_dict=state_dict)
        tokenizer.save_pretrained(staged)
    except OSError as error:
        if error.filename is not None and error.errno != errno.ENOSPC:
            raise
        raise no_space_error(error, staged, "the final model") from error
    verify_saved_model(staged, model, state_dict)
    publish_directory(staged, out / "model")


def verify_saved_model(staged: Path, model, state_dict: dict[str, torch.Tensor] | None) -> None:
    """Reload ``staged`` and compare it with the trained model; raise :class:`SavedModelMismatchError`."""
    from transformers import AutoModelForCausalLM

    import flythinker.modeling  # noqa: F401  (registers the architecture)

    dtype = next(model.parameters()).dtype if state_dict is None else None
    try:
        reloaded = AutoModelForCausalLM.from_pretrained(staged, dtype=dtype or "auto").eval()
    except Exception as error:  # noqa: BLE001 - any failure to reload is the same finding
        raise SavedModelMismatchError(
            f"{staged}: the saved model does not reload ({type(error).__name__}: {' '.join(str(error).split())[:300]})"
            "; it was not published as model/"
        ) from error
    if state_dict is not None:
        _compare_tensors(staged, reloaded, state_dict)
        return
    device = next(model.parameters()).device
    reloaded.to(device)
    vocab = model.get_input_embeddings().weight.shape[0]
    probe = (torch.arange(8, device=device) * 7919 % vocab).unsqueeze(0)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=probe).logits.float()
        got = reloaded(input_ids=probe).logits.float()
    model.train(was_training)
    difference = (expected - got).abs().max().item()
    if not difference <= PROBE_TOLERANCE:
        raise SavedModelMismatchError(
            f"{staged}: the saved model's logits differ from the trained model's by {difference:.3g} "
            f"(> {PROBE_TOLERANCE:g}); it was not published as model/"
        )


def _compare_tensors(staged: Path, reloaded, state_dict: dict[str, Any]) -> None:
    saved = reloaded.state_dict()
    for name, tensor in state_dict.items():
        if name not in saved:
            continue  # a tied weight saved once
        if (
            tensor.numel() == 0
            or saved[name].shape != tensor.shape
            or not torch.equal(saved[name].cpu().to(tensor.dtype), tensor.cpu())
        ):
            raise SavedModelMismatchError(
                f"{staged}: tensor {name} reloads as {tuple(saved[name].shape)} but was trained as "
                f"{tuple(tensor.shape)} (or with other values); it was not published as model/"
            )
