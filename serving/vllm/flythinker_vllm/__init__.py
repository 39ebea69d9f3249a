"""flythinker-vllm: serve FlyThinker checkpoints (``save_pretrained`` directories) with vLLM.

vLLM calls :func:`register` in every process through the ``vllm.general_plugins`` entry point.
"""

from __future__ import annotations

ARCHITECTURE = "FlyThinkerForCausalLM"
MODEL_CLASS = "flythinker_vllm.model:FlyThinkerForCausalLM"

__all__ = ["register", "ARCHITECTURE"]


def register() -> None:
    """Register FlyThinker's config with transformers, its model with vLLM and the start-up check of
    the engine options it refuses (:mod:`flythinker_vllm.limits`); idempotent."""
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from flythinker.modeling.configuration_flythinker import FlyThinkerConfig

    from .limits import register_config_check

    AutoConfig.register(FlyThinkerConfig.model_type, FlyThinkerConfig, exist_ok=True)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
    register_config_check(ARCHITECTURE)
