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
from .sharding import full_state_dict

logger = logging.getLogger(__name__)

PROBE_TOLERANCE = 1e-4
"""Largest |Δlogit| between the trained model and its reloaded copy (the same weights: ~0 in practice)."""


class SavedModelMismatchError(RuntimeError):
    """The written ``model/`` does not reload to the trained weights; it was not published."""


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
    if state_dict is not None:  # a gathered dict holds tied weights twice: keep the one the model saves
        tied = set(getattr(model, "all_tied_weights_keys", None) or {})
        state_dict = {name: tensor for name, tensor in state_dict.items() if name not in tied}
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
        # a copy: save_pretrained empties the dict it is given as it writes
        model.save_pretrained(staged, state_dict=None if state_dict is None else dict(state_dict))
        tokenizer.save_pretrained(staged)
    except OSError as error:
        if error.filename is not None and error.errno != errno.ENOSPC:
            raise
        raise no_space_error(error, staged, "the final model") from error
    verify_saved_model(staged, model, state_dict)
    publish_directory(staged, out / "model")


def verify_saved_model(staged: Path, model, state_dict: dict[str, torch.Tensor] | None) -> None:
    """Reload ``staged`` and compare it with the trained model; raise :class:`SavedModelMismatchError`.

    Unsharded: ``from_pretrained`` and a logit probe. Sharded: every stored tensor is read back from the
    safetensors files and compared with the gathered state dict (a ``from_pretrained`` here would run
    ZeRO-3's partitioned init on this rank alone)."""
    if state_dict is not None:
        _compare_files(staged, state_dict)
        return
    from transformers import AutoModelForCausalLM

    import flythinker.modeling  # noqa: F401  (registers the architecture)

    try:
        reloaded = AutoModelForCausalLM.from_pretrained(staged, dtype=next(model.parameters()).dtype).eval()
    except Exception as error:  # noqa: BLE001 - any failure to reload is the same finding
        raise SavedModelMismatchError(
            f"{staged}: the saved model does not reload ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:300]}); it was not published as model/"
        ) from error
    device = next(model.parameters()).device
    reloaded.to(device)
    vocab = model.get_input_embeddings().weight.shape[0]
    probe = {"input_ids": (torch.arange(8, device=device) * 7919 % vocab).unsqueeze(0)}
    if getattr(model.config, "reasoner_context", False):  # its reasoner reads a sequence of its own
        probe["reasoner_input_ids"] = (torch.arange(12, device=device) * 104729 % vocab).unsqueeze(0)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        expected = model(**probe).logits.float()
        got = reloaded(**probe).logits.float()
    model.train(was_training)
    difference = (expected - got).abs().max().item()
    if not difference <= PROBE_TOLERANCE:
        raise SavedModelMismatchError(
            f"{staged}: the saved model's logits differ from the trained model's by {difference:.3g} "
            f"(> {PROBE_TOLERANCE:g}); it was not published as model/"
        )


def _compare_files(staged: Path, state_dict: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    stored: dict[str, torch.Tensor] = {}
    for file in sorted(staged.glob("*.safetensors")):
        stored.update(load_file(str(file)))
    if not stored:
        raise SavedModelMismatchError(f"{staged}: no weights were written; it was not published as model/")
    for name, tensor in stored.items():
        trained = state_dict.get(name)
        if (
            tensor.numel() == 0
            or trained is None
            or tensor.shape != trained.shape
            or not torch.equal(tensor, trained.detach().cpu().to(tensor.dtype))
        ):
            shape = None if trained is None else tuple(trained.shape)
            raise SavedModelMismatchError(
                f"{staged}: tensor {name} was written as {tuple(tensor.shape)} but trained as {shape} (or with "
                "other values); it was not published as model/"
            )
