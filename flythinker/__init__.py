"""flythinker: think-while-generating as a 🤗 transformers architecture.

A reasoner LM computes latent token-level reasoning in one parallel pass; its state at position
i−1 is fused into the generator's input embedding at position i (docs/design.md §1). Importing this
package registers FlyThinker with transformers' Auto classes (loading only the config module) and
resolves every public name on first access (PEP 562), so ``import flythinker.kernels.injection`` never
loads the model or the decoding engine, and triton, flash-attn, peft and trl stay optional.

``flythinker.kernels``, ``flythinker.modeling`` and ``flythinker.train`` are the repository's top-level
``kernels/``, ``modeling/`` and ``train/`` folders (pyproject.toml's package-dir; in a checkout
``flythinker/kernels`` etc. are links to them). Those folders hold no ``__init__.py`` on purpose: a
checkout's root is on ``sys.path`` whenever one runs ``python -m ...`` or pytest there, and a regular
package named ``kernels`` in it would shadow the HF ``kernels`` package that transformers imports. As
namespace packages they lose to any installed package of the same name (docs/design.md §2).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "FlyThinkerCache": "flythinker.modeling.cache_flythinker",
    "FlyThinkerConfig": "flythinker.modeling.configuration_flythinker",
    "FlyThinkerForCausalLM": "flythinker.modeling.modeling_flythinker",
    "check_vocab_compatibility": "flythinker.modeling.loading",
    "convert_reference_checkpoint": "flythinker.modeling.conversion",
    "generate": "flythinker.decoding",
    "stream": "flythinker.decoding",
}

__all__ = [
    "FlyThinkerCache",
    "FlyThinkerConfig",
    "FlyThinkerForCausalLM",
    "check_vocab_compatibility",
    "convert_reference_checkpoint",
    "generate",
    "stream",
]

if TYPE_CHECKING:  # pragma: no cover - for static analysers only
    from flythinker.decoding import generate, stream
    from flythinker.modeling.cache_flythinker import FlyThinkerCache
    from flythinker.modeling.configuration_flythinker import FlyThinkerConfig
    from flythinker.modeling.conversion import convert_reference_checkpoint
    from flythinker.modeling.loading import check_vocab_compatibility
    from flythinker.modeling.modeling_flythinker import FlyThinkerForCausalLM


def _register_with_transformers() -> None:
    """``import flythinker`` makes saved FlyThinker directories load through transformers' Auto classes
    without ``trust_remote_code`` (loading only the config module now; see modeling/auto_classes.py)."""
    from flythinker.modeling.auto_classes import register_auto_classes

    register_auto_classes()


_register_with_transformers()


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flythinker' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(module), name)
    except AttributeError as error:  # raised inside the import: surface it, not a "no attribute" of ours
        raise ImportError(f"importing {module} for flythinker.{name} failed: {error}") from error
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
