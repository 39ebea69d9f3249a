"""Self-describing saved directories: a two-file remote-code shim and ``config.auto_map``.

A directory written by ``FlyThinkerForCausalLM.save_pretrained`` loads the way custom architectures
on the Hub do, in a process that never imported flythinker::

    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)   # lm-eval, TRL, vLLM, scripts

Contract:

* ``config.json`` carries ``auto_map = AUTO_MAP`` (every FlyThinkerConfig has it, so tools such as
  TRL's ``create_model_from_path`` can read ``config.auto_map``);
* the directory holds ``configuration_flythinker.py`` and ``modeling_flythinker.py``: a few lines each
  that import the *installed* flythinker package (no model code is copied) and, when it is missing,
  raise ``ImportError`` saying ``pip install flythinker``;
* the shim classes are empty subclasses (same names, same ``model_type``), so transformers'
  ``register_for_auto_class`` side effects land on them, never on flythinker's own classes, and a model
  loaded through the shim saves the same shim again (transformers' ``custom_object_save``);
* when flythinker *is* imported, its classes are registered with the auto classes and take precedence
  (transformers prefers explicitly registered local code), with or without ``trust_remote_code``.
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_MODULE = "configuration_flythinker"
MODELING_MODULE = "modeling_flythinker"

AUTO_MAP: dict[str, str] = {
    "AutoConfig": f"{CONFIG_MODULE}.FlyThinkerConfig",
    "AutoModel": f"{MODELING_MODULE}.FlyThinkerForCausalLM",
    "AutoModelForCausalLM": f"{MODELING_MODULE}.FlyThinkerForCausalLM",
}

_IMPORT_GUARD = """try:
    from flythinker import {name} as _{name}
except ModuleNotFoundError as error:
    if (error.name or "").split(".")[0] != "flythinker":
        raise
    raise ImportError(
        "This model directory was saved by flythinker (think-while-generating models) and needs the "
        "flythinker package to load: pip install flythinker"
    ) from error
"""

CONFIG_SHIM = (
    '"""Remote-code entry point written by flythinker: the configuration lives in the installed package."""\n\n'
    + _IMPORT_GUARD.format(name="FlyThinkerConfig")
    + '''

class FlyThinkerConfig(_FlyThinkerConfig):
    """flythinker.FlyThinkerConfig (a subclass, so auto-class registration stays local)."""

    def __init__(self, *args, **kwargs):  # an own __init__: transformers would otherwise replace it
        super().__init__(*args, **kwargs)
'''
)

MODELING_SHIM = (
    '"""Remote-code entry point written by flythinker: the model lives in the installed package."""\n\n'
    "from .configuration_flythinker import FlyThinkerConfig\n\n"
    + _IMPORT_GUARD.format(name="FlyThinkerForCausalLM")
    + '''

class FlyThinkerForCausalLM(_FlyThinkerForCausalLM):
    """flythinker.FlyThinkerForCausalLM (a subclass, so auto-class registration stays local)."""

    config_class = FlyThinkerConfig
'''
)


def default_auto_map() -> dict[str, str]:
    """A fresh copy of :data:`AUTO_MAP` (``FlyThinkerConfig.auto_map`` when none is given)."""
    return dict(AUTO_MAP)


def write_remote_code(save_directory: str | os.PathLike) -> list[Path]:
    """Write the two shim modules into ``save_directory`` (created if needed); returns their paths.

    ``FlyThinkerForCausalLM.save_pretrained`` calls this; call it yourself after saving only a
    config (``config.save_pretrained``) if that directory must load with ``trust_remote_code=True``.
    """
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for module, text in ((CONFIG_MODULE, CONFIG_SHIM), (MODELING_MODULE, MODELING_SHIM)):
        path = directory / f"{module}.py"
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
