"""Building a FlyThinker from two base checkpoints, and the tokenizer/vocabulary check (docs/design.md §1, §3)."""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from .configuration_flythinker import FlyThinkerConfig

logger = logging.getLogger(__name__)


def check_vocab_compatibility(
    generator_config: PretrainedConfig, reasoner_config: PretrainedConfig, tokenizer: Any | None = None
) -> None:
    """Both models read the same ids: every id the tokenizer can emit must be < min(V_G, V_R).

    Without a tokenizer only the vocabulary sizes are compared (a mismatch is legitimate when one
    table is padded, e.g. Qwen2 0.5B vs 7B, so it is logged, not raised).
    """
    v_g = generator_config.get_text_config().vocab_size
    v_r = reasoner_config.get_text_config().vocab_size
    if tokenizer is not None:
        n_ids = len(tokenizer)
        if n_ids > min(v_g, v_r):
            raise ValueError(
                f"tokenizer can emit {n_ids} ids but the generator has {v_g} and the reasoner {v_r} embedding rows: "
                "both models must read the same token ids (every id < min(V_G, V_R))"
            )
    elif v_g != v_r:
        logger.warning(
            "generator vocab %d != reasoner vocab %d; pass a tokenizer to check compatibility", v_g, v_r
        )


def _load_causal_lm(source: str | os.PathLike | PreTrainedModel, **kwargs: Any) -> PreTrainedModel:
    if isinstance(source, PreTrainedModel):
        return source
    return AutoModelForCausalLM.from_pretrained(source, **kwargs)


def _backbone(model: PreTrainedModel) -> PreTrainedModel:
    """The causal LM's backbone (the module whose ``last_hidden_state`` is h; no LM head)."""
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else None
    if backbone is None or backbone is model:
        backbone = model.base_model
    if backbone is model:
        raise ValueError(
            f"cannot find the backbone of {type(model).__name__}: pass a causal LM with a base model"
        )
    return backbone


def _try_tokenizer(source: Any) -> Any | None:
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        try:
            return AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as error:
            logger.warning(
                "no tokenizer loadable from %s (%s); vocabulary check uses sizes only", source, error
            )
    return None


def build_from_components(
    model_class: type,
    generator: str | os.PathLike | PreTrainedModel,
    reasoner: str | os.PathLike | PreTrainedModel,
    *,
    fusion_lambda: float = 0.5,
    norm_eps: float = 0.0,
    projection: str = "zero_pad",
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    tokenizer: Any | None = None,
    **config_kwargs: Any,
):
    """Load two causal-LM checkpoints (paths, hub-style ids available offline, or model objects) and fuse them.

    The reasoner's LM head is dropped: only its backbone is kept. Every new parameter (projection,
    reward heads) is initialised by the model's ``_init_weights``.
    """
    load_kwargs: dict[str, Any] = {"attn_implementation": attn_implementation}
    if dtype is not None:
        load_kwargs["dtype"] = dtype
    generator_lm = _load_causal_lm(generator, **load_kwargs)
    reasoner_backbone = _backbone(_load_causal_lm(reasoner, **load_kwargs))
    if tokenizer is None:
        tokenizer = _try_tokenizer(generator)
    check_vocab_compatibility(generator_lm.config, reasoner_backbone.config, tokenizer)

    config = FlyThinkerConfig(
        generator_config=generator_lm.config,
        reasoner_config=reasoner_backbone.config,
        fusion_lambda=fusion_lambda,
        norm_eps=norm_eps,
        projection=projection,
        **config_kwargs,
    )
    with torch.device("meta"):
        model = model_class(config)
    model.generator = generator_lm
    model.reasoner = reasoner_backbone
    device = generator_lm.get_input_embeddings().weight.device
    param_dtype = generator_lm.get_input_embeddings().weight.dtype
    for name, module in list(model.named_children()):
        if name in ("generator", "reasoner"):
            continue
        module = module.to_empty(device=device).to(param_dtype)
        setattr(model, name, module)
        model._init_weights(module)
    model.config._attn_implementation = attn_implementation
    model.refresh_mean_embedding_norm(force=True)
    return model


# ------------------------------------------------------------------------------- strict loading
class CheckpointMismatchError(ValueError):
    """A checkpoint's weights do not match the model its config describes (missing / unexpected keys)."""


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_loading_info(
    info: dict[str, Any],
    source: Any,
    *,
    allow_missing: tuple[str, ...] = (),
    allow_unexpected: tuple[str, ...] = (),
) -> None:
    """Raise :class:`CheckpointMismatchError` unless the checkpoint filled exactly the model's state dict.

    ``info`` is transformers' loading info (``output_loading_info=True``): its ``missing_keys`` are the
    model's own expected state-dict keys (persistent parameters and buffers; tied weights and
    non-persistent buffers such as m̄ excluded) that the file lacks, so new persistent parameters need
    no list here. Keys starting with a prefix in ``allow_missing`` (e.g. ``"reward_heads."`` when
    adding heads to a trained model) may be missing: they keep their fresh initialisation.
    """
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(tuple(allow_missing)))
    unexpected = sorted(
        k for k in info.get("unexpected_keys", ()) if not k.startswith(tuple(allow_unexpected))
    )
    mismatched = sorted(
        str(item[0] if isinstance(item, tuple) else item) for item in info.get("mismatched_keys", ())
    )
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_preview(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_preview(unexpected)})")
    if mismatched:
        parts.append(f"{len(mismatched)} keys with other shapes ({_preview(mismatched)})")
    hint = ""
    if unexpected and not any(k.startswith(("generator.", "reasoner.")) for k in unexpected) and missing:
        hint = " (the file looks like a plain causal LM, not a FlyThinker: build one with from_components)"
    raise CheckpointMismatchError(
        f"{source}: the weights do not match the FlyThinker config: {'; '.join(parts)}{hint}. Loading would leave "
        "those parameters randomly initialised. Use the directory the model was saved to, or pass "
        "allow_missing=('<prefix>',) for parameters you add on purpose (e.g. 'reward_heads.'), or strict=False "
        "to load anyway"
    )


_SAFETENSORS_FLOAT = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def _safetensors_files(directory: str) -> list[str]:
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as handle:
            names = sorted(set(json.load(handle).get("weight_map", {}).values()))
    else:
        names = ["model.safetensors"]
    return [os.path.join(directory, n) for n in names if os.path.isfile(os.path.join(directory, n))]


def check_stored_dtypes(source: Any, model: Any) -> None:
    """Raise :class:`CheckpointMismatchError` when a tensor's dtype in the source's safetensors files is not
    of the kind (floating or integer) of the model's tensor of that name: a header relabelling F32 weights
    as I32 keeps every length and would otherwise load values ~1e9 without a word. Non-local sources and
    names the model does not have are skipped; reading the headers costs a few kilobytes per file."""
    if not isinstance(source, (str, os.PathLike)) or not os.path.isdir(source):
        return
    expected = {name: tensor.dtype for name, tensor in model.state_dict().items()}
    for path in _safetensors_files(os.fspath(source)):
        try:
            with open(path, "rb") as handle:
                header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        except (OSError, ValueError):
            continue  # the loader itself reports an unreadable file
        for name, entry in header.items():
            if name == "__metadata__" or name not in expected or not isinstance(entry, dict):
                continue
            stored, wanted = entry.get("dtype"), expected[name]
            if (stored in _SAFETENSORS_FLOAT) != wanted.is_floating_point:
                raise CheckpointMismatchError(
                    f"{path}: tensor {name} is stored as {stored} but the model's is {wanted} (a damaged or "
                    "relabelled weights file); restore the file from the saved model"
                )


def _mismatched_shapes(source: Any, model_class: Any) -> list[str]:
    """``"<key> <stored shape> vs <config shape>"`` for every stored tensor whose shape the config contradicts
    (the model is built on the meta device: no memory); empty when that cannot be worked out."""
    if model_class is None or not isinstance(source, (str, os.PathLike)) or not os.path.isdir(source):
        return []
    try:
        config = model_class.config_class.from_pretrained(source)
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in model_class(config).state_dict().items()}
    except Exception:  # noqa: BLE001 - a best-effort detail of an error already being raised
        return []
    found = []
    for path in _safetensors_files(os.fspath(source)):
        with open(path, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        for name, entry in header.items():
            if (
                name in expected
                and isinstance(entry, dict)
                and tuple(entry.get("shape", ())) != expected[name]
            ):
                found.append(f"{name} {tuple(entry['shape'])} vs {expected[name]}")
    return sorted(found)


def strict_from_pretrained(
    load: Any,
    source: Any,
    *args: Any,
    strict: bool = True,
    allow_missing: tuple[str, ...] = (),
    **kwargs: Any,
):
    """``load(source, *args, **kwargs)`` (a ``from_pretrained``) followed by :func:`check_loading_info`.

    ``strict=False`` keeps transformers' behaviour (a logged report, fresh weights for missing keys).
    A caller's own ``output_loading_info=True`` still gets ``(model, info)``.
    """
    wants_info = bool(kwargs.pop("output_loading_info", False))
    try:
        model, info = load(source, *args, output_loading_info=True, **kwargs)
    except RuntimeError as error:
        if "ignore_mismatched_sizes" not in str(error):
            raise
        shapes = _mismatched_shapes(source, getattr(load, "__self__", None))
        raise CheckpointMismatchError(
            f"{source}: {len(shapes) or 'some'} weights have other shapes than its config.json describes"
            f"{' (' + _preview(shapes) + ')' if shapes else ''}: the weights and the config belong to different "
            "models; restore the directory the model was saved to"
        ) from None
    check_stored_dtypes(source, model)
    if strict:
        check_loading_info(info, source, allow_missing=tuple(allow_missing))
    elif any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        logger.warning(
            "%s loaded with strict=False: missing %s, unexpected %s",
            source,
            sorted(info.get("missing_keys", ())),
            sorted(info.get("unexpected_keys", ())),
        )
    return (model, info) if wants_info else model


# ------------------------------------------------------------------------------- model sources
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def looks_like_hub_id(value: str) -> bool:
    """``owner/name`` that is not a local path: no leading ``.``, ``/`` or ``~``, exactly one ``/``, and an
    ``owner`` that is not an existing local directory (``runs/modle`` with ``runs/`` present is a path)."""
    return bool(_HUB_ID.match(value)) and not os.path.isdir(value.split("/", 1)[0])


def check_model_source(value: Any, what: str = "model") -> None:
    """Fail at once, without any network access, when ``value`` names a local model directory that is not there.

    Accepted: a model object; an existing directory holding ``config.json``; a hub id ``owner/name``
    (:func:`looks_like_hub_id`), which transformers resolves from its cache or the hub. Anything else is
    a path and must exist.
    """
    if isinstance(value, PreTrainedModel):
        return
    text = os.fspath(value)
    path = os.path.expanduser(text)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(
                f"{what} {text}: the directory has no config.json; expected a saved model "
                "directory (config.json + model.safetensors)"
            )
        return
    if os.path.exists(path):
        raise NotADirectoryError(
            f"{what} {text}: is a file; expected a model directory (config.json + weights)"
        )
    if looks_like_hub_id(text):
        return
    raise FileNotFoundError(
        f"{what} {text}: no such directory (looked in {os.getcwd()}); check the path "
        "(a hub model id has the form owner/name)"
    )
