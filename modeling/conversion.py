"""Conversion of reference-implementation checkpoints (``Generator.*`` / ``Reasoner.*`` state dicts)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer

from .configuration_flythinker import FlyThinkerConfig
from .loading import check_vocab_compatibility
from .modeling_flythinker import FlyThinkerForCausalLM

logger = logging.getLogger(__name__)

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def load_reference_state_dict(checkpoint_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read ``model.safetensors`` or ``pytorch_model.bin`` (with ``weights_only=True``) from the directory."""
    checkpoint_dir = Path(checkpoint_dir)
    for name in _WEIGHT_FILES:
        path = checkpoint_dir / name
        if path.exists():
            if name.endswith(".safetensors"):
                return load_file(str(path))
            return torch.load(path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{checkpoint_dir}: no {' or '.join(_WEIGHT_FILES)} found")


def map_reference_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``Generator.<causal-LM key>`` → ``generator.<key>``; ``Reasoner.model.<key>`` → ``reasoner.<key>``.

    The reasoner's ``lm_head`` is unused by FlyThinker and dropped with a message. Any other key
    (unknown prefix, or a reasoner key outside ``model.``) is an error naming the keys.
    """
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, tensor in state_dict.items():
        if key.startswith("Generator."):
            mapped["generator." + key[len("Generator.") :]] = tensor
        elif key.startswith("Reasoner.model."):
            mapped["reasoner." + key[len("Reasoner.model.") :]] = tensor
        elif key == "Reasoner.lm_head.weight":
            logger.warning(
                "dropping Reasoner.lm_head.weight: FlyThinker uses only the reasoner's backbone states"
            )
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(
            f"unexpected keys in the reference checkpoint (expected 'Generator.*' or 'Reasoner.model.*'): {sorted(unexpected)}"
        )
    return mapped


PROBE_TEXT = "Hello world"


def tokenizer_encodes_text(tokenizer: Any) -> bool:
    """True when the tokenizer turns ``"Hello world"`` into some ids (none unknown) that decode back to it."""
    try:
        ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        unk = getattr(tokenizer, "unk_token_id", None)
        return bool(ids) and unk not in ids and tokenizer.decode(ids).strip() == PROBE_TEXT
    except Exception:  # noqa: BLE001 - a broken tokenizer may raise anything
        return False


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
"""Files one of which every saved tokenizer directory holds."""


def find_tokenizer(explicit: Any | None, candidates: list[Any]) -> tuple[Any | None, str | None]:
    """(tokenizer, where it came from): ``explicit`` (a path or tokenizer; must work, else ``ValueError``) or
    the first candidate directory whose tokenizer encodes text; ``(None, None)`` when none does."""
    if explicit is not None:
        tokenizer = explicit
        if isinstance(explicit, (str, os.PathLike)):
            if Path(explicit).is_dir() and not any(
                Path(explicit, name).is_file() for name in TOKENIZER_FILES
            ):
                raise ValueError(
                    f"tokenizer {explicit} (--tokenizer): the directory holds no tokenizer files "
                    f"({', '.join(TOKENIZER_FILES)}), so it cannot encode text; pass the tokenizer directory of the generator's base model"
                )
            try:
                tokenizer = AutoTokenizer.from_pretrained(explicit)
            except (OSError, ValueError) as error:
                raise ValueError(f"tokenizer {explicit}: cannot load it ({error})") from error
        if not tokenizer_encodes_text(tokenizer):
            raise ValueError(
                f"tokenizer {explicit}: it cannot encode text ({PROBE_TEXT!r} gives no ids or does not "
                "decode back); pass the tokenizer directory of the generator's base model"
            )
        return tokenizer, str(explicit)
    for candidate in candidates:
        if not isinstance(candidate, (str, os.PathLike)) or not Path(candidate).is_dir():
            continue
        try:
            tokenizer = AutoTokenizer.from_pretrained(candidate)
        except (OSError, ValueError, TypeError):
            continue
        if tokenizer_encodes_text(tokenizer):
            return tokenizer, str(candidate)
        logger.warning(
            "%s: its tokenizer cannot encode text (e.g. built from config.json alone); not using it",
            candidate,
        )
    return None, None


def convert_reference_checkpoint(
    checkpoint_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    reasoner_config: str | os.PathLike | Any | None = None,
    tokenizer: str | os.PathLike | Any | None = None,
    **config_kwargs: Any,
):
    """Convert a reference checkpoint directory into a FlyThinker model (saved to ``output_dir`` if given).

    Args:
        checkpoint_dir: holds the state dict (``Generator.`` / ``Reasoner.`` prefixes) and the generator's
            ``config.json`` (and optionally its tokenizer).
        output_dir: where to ``save_pretrained`` the converted model (config, safetensors, tokenizer).
        reasoner_config: the reasoner's base checkpoint (path) or config object; default: the generator's.
        tokenizer: the tokenizer to save with the model (a directory or a tokenizer object). Default: the
            first of ``checkpoint_dir`` and the ``reasoner_config`` directory whose tokenizer encodes text
            (the reference trainer saves no tokenizer files, and transformers then builds a one-token
            tokenizer from ``config.json`` alone, which is never written). Without one, only weights and
            config are written (a warning says so).
        config_kwargs: FlyThinkerConfig options (``fusion_lambda``, ``projection``, ...), validated by the config.

    Every key is checked strictly: a missing key (other than a tied ``lm_head``) or an unexpected one
    raises an error naming it. Everything is checked before ``output_dir`` is written.
    """

    generator_config = AutoConfig.from_pretrained(checkpoint_dir)
    reasoner_source = reasoner_config
    if reasoner_config is None:
        reasoner_config = generator_config
    elif not hasattr(reasoner_config, "to_dict"):
        reasoner_config = AutoConfig.from_pretrained(reasoner_config)
    config = FlyThinkerConfig(
        generator_config=generator_config, reasoner_config=reasoner_config, **config_kwargs
    )
    state_dict = map_reference_keys(load_reference_state_dict(checkpoint_dir))
    found_tokenizer, tokenizer_source = (None, None)
    if output_dir is not None:
        found_tokenizer, tokenizer_source = find_tokenizer(tokenizer, [checkpoint_dir, reasoner_source])
        if found_tokenizer is not None:
            check_vocab_compatibility(generator_config, reasoner_config, found_tokenizer)

    model = FlyThinkerForCausalLM(config)
    expected = model.state_dict()
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = sorted(k for k in expected if k not in state_dict and k not in tied)
    unexpected = sorted(k for k in state_dict if k not in expected)
    hint = (
        "; the reasoner was built from the generator's config because no reasoner config was given: pass "
        "--reasoner-config (reasoner_config=) with the reasoner's base checkpoint directory"
        if reasoner_source is None
        else ""
    )
    if missing or unexpected:
        raise ValueError(
            f"reference checkpoint {checkpoint_dir} does not match the configs: missing keys {missing}, "
            f"unexpected keys {unexpected}{hint if any(k.startswith('reasoner.') for k in missing + unexpected) else ''}"
        )
    for key, tensor in state_dict.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"{key}: checkpoint shape {tuple(tensor.shape)} != model shape {tuple(expected[key].shape)}"
                f"{hint if key.startswith('reasoner.') else ''}"
            )
    model.load_state_dict(state_dict, strict=False)
    model.tie_weights()
    model.refresh_mean_embedding_norm(force=True)
    if output_dir is not None:
        model.save_pretrained(output_dir)
        if found_tokenizer is not None:
            found_tokenizer.save_pretrained(output_dir)
            logger.info("saved the tokenizer of %s with the converted model", tokenizer_source)
        else:
            logger.warning(
                "no tokenizer that encodes text in %s or the reasoner directory: wrote weights and config "
                "only; pass tokenizer= (CLI: --tokenizer) to add one",
                checkpoint_dir,
            )
    return model
