"""Registration with transformers' Auto classes that loads no model code.

``import flythinker`` registers ``FlyThinkerConfig`` with ``AutoConfig`` and a stand-in class with
``AutoModelForCausalLM`` / ``AutoModel``, so a saved directory loads with plain transformers calls
(no ``trust_remote_code``) while ``import flythinker.kernels`` still loads only the config module on
top of the kernels. Any attribute of the stand-in (``from_pretrained``, ``from_config``,
``config_class``, …) is the real :class:`~flythinker.modeling.modeling_flythinker.FlyThinkerForCausalLM`'s, imported on
first use, and the stand-in carries the real class's name (pipelines check model names); what the
Auto classes build is always an instance of the real class.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_flythinker import FlyThinkerConfig


def _real_model_class() -> type:
    from .modeling_flythinker import FlyThinkerForCausalLM

    return FlyThinkerForCausalLM


class _DeferredModelClass(type):
    """Metaclass forwarding every class attribute lookup to the real model class."""

    def __getattr__(cls, name: str) -> Any:
        return getattr(_real_model_class(), name)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return _real_model_class()(*args, **kwargs)


class DeferredFlyThinkerForCausalLM(metaclass=_DeferredModelClass):
    """Stand-in for FlyThinkerForCausalLM in the Auto mappings (forwards to the real class)."""

    config_class = FlyThinkerConfig  # read by ``register``; everything else comes from the real class


DeferredFlyThinkerForCausalLM.__name__ = DeferredFlyThinkerForCausalLM.__qualname__ = "FlyThinkerForCausalLM"


def register_auto_classes(model_class: type = DeferredFlyThinkerForCausalLM) -> None:
    """Register the config and ``model_class`` (by default the stand-in) with transformers."""
    AutoConfig.register(FlyThinkerConfig.model_type, FlyThinkerConfig, exist_ok=True)
    AutoModelForCausalLM.register(FlyThinkerConfig, model_class, exist_ok=True)
    AutoModel.register(FlyThinkerConfig, model_class, exist_ok=True)  # the only model class
