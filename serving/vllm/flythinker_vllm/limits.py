"""What the plugin refuses at engine start, because it cannot serve it token-exactly.

* **Speculative decoding** (any method: ngram, EAGLE, MTP, draft models). The per-request latent slot
  carries u_{t-1} from one step to the next; vLLM verifies draft tokens in one forward and rejects some
  of them, but the slot has already been advanced past the rejected positions and nothing rolls it back
  (measured: ngram diverged on 6 of 8 prompts, and crashed with prefix caching).
* **Prompt embeddings** (``--enable-prompt-embeds``): the reasoner must read the token ids; a request
  without them cannot be served (it used to kill the server at its first request).
* **CUDA graphs** (vLLM's default on GPU): the slot's gather/scatter is indexed by per-step metadata and
  has never been captured and replayed on a GPU. Until a GPU test exists, an engine on a CUDA-like
  platform must run with ``enforce_eager=True`` (``--enforce-eager``) or
  ``compilation_config={"cudagraph_mode": "NONE"}`` (``-cc.cudagraph_mode=NONE``, keeps torch.compile).
* **The overlapped step off a GPU** (``FLYTHINKER_VLLM_OVERLAP=1``, :mod:`flythinker_vllm.overlap`): on
  CPU it ran the reasoner on a second thread, and vLLM's CPU GEMMs (oneDNN handlers sharing one scratchpad) are not safe
  on two threads at once: the SmolLM2-135M pair's engine died with SIGSEGV at its first overlapped step
  (bench/bench_serving.py; gdb: JIT-compiled GEMM code on the reasoner's thread).

:func:`refusals` is the one decision (pure: it reads the config and a device type, so it is unit-tested
without a GPU); :func:`check_engine_config` raises it as one ``ValueError``. It runs twice: in the
process that builds the engine's config (through :class:`FlyThinkerConfigCheck`, registered in vLLM's
per-architecture config-hook map by :func:`flythinker_vllm.register`), so ``LLM(...)`` and ``vllm serve``
fail before any engine process starts; and in the model's constructor inside the engine process, so
the refusal holds even where the hook is not reached.
"""

from __future__ import annotations

from typing import Any

from .overlap import ENV as OVERLAP_ENV
from .overlap import overlap_requested

PREFIX = "flythinker-vllm"


def _cudagraphs_disabled(vllm_config: Any) -> bool:
    """True when the engine will capture no CUDA graph: eager, cudagraph_mode NONE, or (mode unset)
    optimization level O0, whose default mode is NONE."""
    if getattr(vllm_config.model_config, "enforce_eager", False):
        return True
    mode = getattr(vllm_config.compilation_config, "cudagraph_mode", None)
    if mode is None:
        level = getattr(vllm_config, "optimization_level", None)
        return level is not None and getattr(level, "name", str(level)).upper() in ("O0", "0")
    return getattr(mode, "name", str(mode)).upper() == "NONE"


def refusals(vllm_config: Any, device_type: str, overlap: bool = False) -> list[str]:
    """One line per engine option the plugin cannot serve exactly (empty: the engine may start).

    ``device_type`` is the platform's (``"cuda"``, ``"rocm"``, ``"cpu"``, ...): CUDA graphs are refused on
    CUDA-like platforms only (vLLM captures none elsewhere), the overlapped step (``overlap``: the
    ``FLYTHINKER_VLLM_OVERLAP`` setting) everywhere else.
    """
    problems = []
    speculative = getattr(vllm_config, "speculative_config", None)
    if speculative is not None:
        method = getattr(speculative, "method", None) or "draft model"
        problems.append(
            f"{PREFIX}: speculative decoding ({method}) is not supported: the per-request reasoner state is "
            "not rolled back when draft tokens are rejected, so tokens would silently differ; "
            "remove speculative_config / --speculative-config"
        )
    if getattr(vllm_config.model_config, "enable_prompt_embeds", False):
        problems.append(
            f"{PREFIX}: --enable-prompt-embeds (enable_prompt_embeds=True) is not supported: the reasoner "
            "reads the prompt's token ids; remove the option and send token ids or text"
        )
    if device_type in ("cuda", "rocm") and not _cudagraphs_disabled(vllm_config):
        problems.append(
            f"{PREFIX}: CUDA graphs are not supported yet (the latent slot has not been captured and "
            "replayed on a GPU); pass --enforce-eager (LLM(enforce_eager=True)) or "
            '-cc.cudagraph_mode=NONE (compilation_config={"cudagraph_mode": "NONE"}, keeps torch.compile)'
        )
    if overlap and device_type not in ("cuda", "rocm"):
        problems.append(
            f"{PREFIX}: {OVERLAP_ENV}=1 needs a CUDA or ROCm GPU (the reasoner runs on a second stream) and is "
            f"refused on {device_type}: on CPU its second thread crashed the engine (SIGSEGV with SmolLM2-135M "
            "layers; vLLM's CPU matrix multiplies, oneDNN handlers sharing one scratchpad, are not safe on two "
            "threads); leave it unset (the default sequential step, exact)"
        )
    return problems


def current_device_type() -> str:
    """vLLM's platform device type (``cuda``, ``rocm``, ``cpu``, ...)."""
    from vllm.platforms import current_platform

    if current_platform.is_rocm():
        return "rocm"
    if current_platform.is_cuda():
        return "cuda"
    return str(current_platform.device_type or "unknown")


def check_engine_config(vllm_config: Any, device_type: str | None = None) -> None:
    """Raise ``ValueError`` naming every refused option (see :func:`refusals`)."""
    device_type = device_type if device_type is not None else current_device_type()
    problems = refusals(vllm_config, device_type, overlap=overlap_requested())
    if problems:
        raise ValueError("; ".join(problems))


def config_check_class() -> type:
    """The hook class vLLM calls while building the engine config (``verify_and_update_config``)."""
    from vllm.model_executor.models.config import VerifyAndUpdateConfig

    class FlyThinkerConfigCheck(VerifyAndUpdateConfig):
        @staticmethod
        def verify_and_update_config(vllm_config) -> None:
            check_engine_config(vllm_config)

    return FlyThinkerConfigCheck


def register_config_check(architecture: str) -> bool:
    """Add the check to vLLM's per-architecture config hooks (the map its own models use; vLLM has no
    public registration for out-of-tree models). Returns False when this vLLM has no such map: the
    model's constructor still refuses, inside the engine process."""
    try:
        from vllm.model_executor.models import config as model_configs
    except ImportError:
        return False
    hooks = getattr(model_configs, "MODELS_CONFIG_MAP", None)
    if not isinstance(hooks, dict):
        return False
    hooks.setdefault(architecture, config_check_class())
    return True
