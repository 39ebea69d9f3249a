"""flythinker.modeling: FlyThinkerConfig, FlyThinkerForCausalLM, the fusion module, cache, loading, conversion.

Names resolve on first access (PEP 562), so importing one module of this layer (e.g. the config)
does not load the others. Layer rule: modeling uses kernels, never train / decoding / evaluation.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "FlyThinkerCache": ".cache_flythinker",
    "FlyThinkerConfig": ".configuration_flythinker",
    "FlyThinkerForCausalLM": ".modeling_flythinker",
    "FlyThinkerPreTrainedModel": ".modeling_flythinker",
    "LatentFusion": ".fusion",
    "check_vocab_compatibility": ".loading",
    "convert_reference_checkpoint": ".conversion",
}

__all__ = [
    "FlyThinkerCache",
    "FlyThinkerConfig",
    "FlyThinkerForCausalLM",
    "FlyThinkerPreTrainedModel",
    "LatentFusion",
    "check_vocab_compatibility",
    "convert_reference_checkpoint",
]

if TYPE_CHECKING:  # pragma: no cover
    from .cache_flythinker import FlyThinkerCache
    from .configuration_flythinker import FlyThinkerConfig
    from .conversion import convert_reference_checkpoint
    from .fusion import LatentFusion
    from .loading import check_vocab_compatibility
    from .modeling_flythinker import FlyThinkerForCausalLM, FlyThinkerPreTrainedModel


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flythinker.modeling' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(module, __name__), name)
    except AttributeError as error:  # raised inside the import: surface it
        raise ImportError(f"importing flythinker.modeling{module} for {name} failed: {error}") from error
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
