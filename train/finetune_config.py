"""The options of one fine-tuning run (:class:`FinetuneConfig`) and how they are resolved and checked.

Resolution (:meth:`FinetuneConfig.validate`) records only what will run:

* ``--method sft`` trains the generator alone: an explicit FlyThinker option (``--recipe``, a model option,
  a warm-start option, ``--reasoner``, ``--reasoner-mode``) is refused, and those fields are recorded as
  ``null`` (not applicable);
* a FlyThinker built from two checkpoints takes every unset (None) option from ``--recipe``;
* continuing a saved FlyThinker (``--generator`` is one) takes the model options from its ``config.json``;
  an explicit option or a recipe that would change them is refused (the weights are built for them).
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from .checkpoints import checkpoint_problem

METHODS = ("flythinker", "sft")
REASONER_MODES = ("full", "freeze", "lora")
MODEL_OPTION_FIELDS: tuple[str, ...] = (
    "fusion_lambda",
    "norm_eps",
    "projection",
    "fusion_gate",
    "center_reasoner",
    "reasoner_context",
)
"""FinetuneConfig fields passed unchanged to ``FlyThinkerConfig`` (a new config option: add a field of the same
name to FinetuneConfig, its name here and its help in ``flythinker.commands.train.FINETUNE_HELP``; the CLI
exposes it). Default ``None`` = "from the recipe, or the saved model" (``MODEL_OPTION_DEFAULTS``)."""
MODEL_OPTION_DEFAULTS: dict[str, Any] = {"fusion_lambda": 0.5, "norm_eps": 0.0}
"""What an unset model option that no recipe sets becomes for a FlyThinker built from two checkpoints."""
RECIPE_FIELDS: tuple[str, ...] = (
    "projection",
    "fusion_gate",
    "center_reasoner",
    "lambda_warmup_steps",
    "center_reasoner_batches",
    "warm_start_lr_multiplier",
    "projection_init_std",
    "reasoner_mode",
)
"""FinetuneConfig fields a ``--recipe`` fills in when they are left unset (None)."""
TRAINING_RECIPE_FIELDS = (
    "lambda_warmup_steps",
    "center_reasoner_batches",
    "warm_start_lr_multiplier",
    "projection_init_std",
    "reasoner_mode",
)
FLYTHINKER_ONLY_FIELDS = tuple(dict.fromkeys((*MODEL_OPTION_FIELDS, *RECIPE_FIELDS, "reasoner")))
"""Fields that mean nothing for ``--method sft`` (the generator alone)."""


@dataclass
class FinetuneConfig:
    """Everything one training run needs; saved as ``finetune_config.json`` in the run directory."""

    train_file: str
    output_dir: str
    generator: str
    reasoner: str | None = None  # default: the generator checkpoint
    method: str = "flythinker"
    task: str | None = None
    max_length: int = 2048
    max_target_tokens: int = 512
    profile_drop: str = "oldest"
    packing: bool = False
    profile_tokens: int | None = None  # at most K profile tokens in the generator's prompt
    reasoner_context: bool = False  # the reasoner also reads the profile (train/reasoner_context.py)
    recipe: str = "default"
    fusion_lambda: float | None = None
    projection: str | None = None
    fusion_gate: str | None = None
    center_reasoner: bool | None = None
    lambda_warmup_steps: float | None = None
    center_reasoner_batches: int | None = None
    warm_start_lr_multiplier: float | None = None
    projection_init_std: float | None = None
    norm_eps: float | None = None
    reasoner_mode: str | None = None  # None: the recipe's (full, or freeze for the default zero_linear)
    lora_generator: bool = False
    lora_rank: int = 16
    lora_alpha: int = 32
    learning_rate: float = 5e-6
    weight_decay: float = 0.025
    warmup_ratio: float = 0.01
    num_train_epochs: float = 5.0
    max_steps: int = -1
    global_batch_size: int = 64
    per_device_batch_size: int = 1
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    bf16: bool = False
    seed: int = 42
    logging_steps: int = 1
    save_steps: int = 50
    save_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None
    max_records: int | None = None
    attn_implementation: str = "sdpa"
    use_fused_loss: bool = True
    keep_freed_host_memory: bool = True
    overwrite: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def explicit(self, name: str) -> bool:
        """Whether option ``name`` was set by the caller (not None, and not its default)."""
        value = getattr(self, name)
        default = _DEFAULTS.get(name)
        return value is not None and (default is None or value != default)

    def resolve_recipe(self) -> None:
        """Fill every unset (None) recipe field from ``--recipe`` (flythinker.train.recipes); explicit
        options win."""
        recipe = _flythinker_recipe(self.recipe)
        values = {
            "projection": recipe.config_overrides.get("projection", "zero_pad"),
            "fusion_gate": recipe.config_overrides.get("fusion_gate", "none"),
            "center_reasoner": recipe.config_overrides.get("center_reasoner", False),
            "lambda_warmup_steps": recipe.lambda_warmup_steps,
            "center_reasoner_batches": recipe.center_reasoner_batches,
            "warm_start_lr_multiplier": recipe.gate_lr_multiplier,
            "projection_init_std": recipe.projection_init_std,
            "reasoner_mode": recipe.reasoner_mode,
            **{k: v for k, v in MODEL_OPTION_DEFAULTS.items() if k not in recipe.config_overrides},
            **{k: v for k, v in recipe.config_overrides.items() if k in MODEL_OPTION_FIELDS},
        }
        for name in (*RECIPE_FIELDS, *MODEL_OPTION_FIELDS):
            if getattr(self, name) is None and name in values:
                setattr(self, name, values[name])

    def resolve_options(self) -> None:
        """Decide every option that depends on the method, the recipe or a saved FlyThinker (module doc);
        raises ``ValueError`` listing the options that cannot apply."""
        _check_choice("method", self.method, METHODS)
        if self.method == "sft":
            given = [_flag(name) for name in FLYTHINKER_ONLY_FIELDS if self.explicit(name)]
            given += ["--recipe"] if self.recipe != "default" else []
            if given:
                raise ValueError(
                    f"--method sft trains the generator alone: {', '.join(given)} would not be used; drop "
                    f"{'it' if len(given) == 1 else 'them'} or use --method flythinker"
                )
            for name in FLYTHINKER_ONLY_FIELDS:
                setattr(self, name, None)  # recorded as null: not applicable
            return
        saved = saved_flythinker_options(self.generator)
        if saved is None:
            self.resolve_recipe()
        else:
            self._continue_saved(saved)

    def _continue_saved(self, saved: dict[str, Any]) -> None:
        """Continue a saved FlyThinker: its model options hold; training-only recipe fields apply."""
        recipe = _flythinker_recipe(self.recipe)
        conflicts = [
            f"{_flag(name)} {getattr(self, name)!r}"
            for name in MODEL_OPTION_FIELDS
            if self.explicit(name) and getattr(self, name) != saved[name]
        ]
        conflicts += [f"--reasoner {self.reasoner}"] if self.reasoner is not None else []
        if self.recipe != "default":
            conflicts += [
                f"--recipe {self.recipe} ({name}={value!r})"
                for name, value in recipe.config_overrides.items()
                if name in MODEL_OPTION_FIELDS and not self.explicit(name) and saved[name] != value
            ]
        if conflicts:
            held = ", ".join(f"{name}={saved[name]!r}" for name in MODEL_OPTION_FIELDS)
            raise ValueError(
                f"--generator {self.generator} is a saved FlyThinker ({held}); {', '.join(conflicts)} would "
                "change its architecture or options, which continuing it cannot do: drop them, or build a new "
                "FlyThinker from the two base checkpoints"
            )
        for name in MODEL_OPTION_FIELDS:
            setattr(self, name, saved[name])
        has_warm_start = (
            saved.get("fusion_gate") not in (None, "none") or saved.get("projection") == "zero_linear"
        )
        defaults = {
            "lambda_warmup_steps": recipe.lambda_warmup_steps if self.recipe != "default" else 0,
            "center_reasoner_batches": 0,  # μ comes with the saved weights
            "warm_start_lr_multiplier": recipe.gate_lr_multiplier if has_warm_start else 1.0,
            "projection_init_std": 0.0,  # W comes with the saved weights
            "reasoner_mode": recipe.reasoner_mode,
        }
        for name in TRAINING_RECIPE_FIELDS:
            if getattr(self, name) is None:
                setattr(self, name, defaults[name])

    def validate(self) -> None:
        """Check every option (type, range, paths) before anything is loaded or written.

        Raises ``ValueError`` / ``FileNotFoundError`` naming the option, the value and what is allowed.
        """
        _check_choice("method", self.method, METHODS)
        _flythinker_recipe(self.recipe)
        _check_paths(self)
        self.resolve_options()
        if self.method == "flythinker":
            _check_model_fields(self)
            _check_choice("reasoner_mode", self.reasoner_mode, REASONER_MODES)
        _check_choice("profile_drop", self.profile_drop, ("oldest", "least_relevant"))
        for name in ("packing", "lora_generator", "gradient_checkpointing", "bf16", "use_fused_loss",
                     "keep_freed_host_memory", "overwrite"):  # fmt: skip
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{_flag(name)} must be true or false, got {getattr(self, name)!r}")
        for name, low in (("max_length", 8), ("max_target_tokens", 1), ("lora_rank", 1), ("lora_alpha", 1),
                          ("global_batch_size", 1), ("per_device_batch_size", 1), ("logging_steps", 1),
                          ("save_steps", 1), ("seed", 0)):  # fmt: skip
            _check_int(name, getattr(self, name), low)
        for name in ("save_total_limit", "max_records"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1, hint=" (omit it for no limit)")
        if self.profile_tokens is not None:
            _check_int("profile_tokens", self.profile_tokens, 0, hint=" (or omit it: as many as fit)")
        if self.reasoner_context and (self.method != "flythinker" or self.packing):
            raise ValueError(
                "--reasoner-context true needs --method flythinker (a reasoner) and no --packing (the two "
                "sequences are left-padded, not packed)"
            )
        if self.max_steps != -1:
            _check_int("max_steps", self.max_steps, 1, hint=" (or -1 to run the epochs)")
        _check_float("learning_rate", self.learning_rate, low=0.0, low_open=True)
        _check_float("weight_decay", self.weight_decay, low=0.0)
        _check_float("warmup_ratio", self.warmup_ratio, low=0.0, high=1.0)
        _check_float("num_train_epochs", self.num_train_epochs, low=0.0, low_open=True)
        _check_float("max_grad_norm", self.max_grad_norm, low=0.0, hint=" (0 disables clipping)")
        if self.global_batch_size < self.per_device_batch_size:
            raise ValueError(
                f"--global-batch-size ({self.global_batch_size}) must be >= --per-device-batch-size "
                f"({self.per_device_batch_size})"
            )
        if self.max_target_tokens >= self.max_length:
            raise ValueError(
                f"--max-target-tokens ({self.max_target_tokens}) must be < --max-length ({self.max_length})"
            )

    def model_options(self) -> dict[str, Any]:
        """The FlyThinkerConfig options of this run (:data:`MODEL_OPTION_FIELDS`)."""
        return {name: getattr(self, name) for name in MODEL_OPTION_FIELDS}


_DEFAULTS = {f.name: f.default for f in fields(FinetuneConfig) if f.default is not MISSING}


def _flythinker_recipe(name: str):
    from .recipes import RECIPES, get_recipe

    recipes = ["default", *(key for key in RECIPES if RECIPES[key].method == "flythinker")]
    if name not in recipes:
        raise ValueError(
            f"--recipe must be one of {recipes}, got {name!r} (the SFT baseline is --method sft)"
        )
    return get_recipe(name)


def saved_flythinker_options(path: str) -> dict[str, Any] | None:
    """The model options of a saved FlyThinker at ``path`` (from its ``config.json``), or None when
    ``path`` is not one."""
    config_file = Path(path, "config.json")
    if not config_file.is_file():
        return None
    try:
        saved = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"--generator {path}: config.json is not valid JSON ({error}); restore it") from None
    if not isinstance(saved, dict) or saved.get("model_type") != "flythinker":
        return None
    defaults = {
        "projection": "zero_pad",
        "fusion_gate": "none",
        "center_reasoner": False,
        "reasoner_context": False,
        **MODEL_OPTION_DEFAULTS,
    }
    return {name: saved.get(name, defaults.get(name, _DEFAULTS.get(name))) for name in MODEL_OPTION_FIELDS}


def _check_model_fields(config: FinetuneConfig) -> None:
    _check_choice("fusion_gate", config.fusion_gate, ("none", "scalar", "channel"))
    _check_choice("projection", config.projection, ("zero_pad", "linear", "zero_linear"))
    if not isinstance(config.center_reasoner, bool):
        raise ValueError(f"--center-reasoner must be true or false, got {config.center_reasoner!r}")
    _check_float("lambda_warmup_steps", config.lambda_warmup_steps, low=0.0,
                 hint=" (steps, or a fraction in (0, 1) of all steps; 0 = off)")  # fmt: skip
    _check_int("center_reasoner_batches", config.center_reasoner_batches, 0)
    if (
        config.center_reasoner
        and config.center_reasoner_batches < 1
        and saved_flythinker_options(config.generator) is None
    ):
        raise ValueError(
            "--center-reasoner true needs --center-reasoner-batches >= 1 (batches that estimate μ)"
        )
    _check_float("warm_start_lr_multiplier", config.warm_start_lr_multiplier, low=0.0, low_open=True)
    _check_float("projection_init_std", config.projection_init_std, low=0.0)
    if config.projection_init_std > 0 and (
        config.projection != "zero_linear" or config.fusion_gate == "none"
    ):
        raise ValueError(
            f"--projection-init-std {config.projection_init_std} needs --projection zero_linear and a "
            "--fusion-gate (scalar or channel): the closed gate keeps step 0 equal to the generator"
        )
    if not isinstance(config.reasoner_context, bool):
        raise ValueError(f"--reasoner-context must be true or false, got {config.reasoner_context!r}")
    _check_float("fusion_lambda", config.fusion_lambda)
    _check_float("norm_eps", config.norm_eps, low=0.0)


def _check_paths(config: FinetuneConfig) -> None:
    """The data, model and run-directory paths exist and have the right kind."""
    train = Path(config.train_file)
    if train.is_dir():
        raise IsADirectoryError(
            f"--train-file {config.train_file}: is a directory; expected a .jsonl, .json or .parquet file"
        )
    if not train.is_file():
        raise FileNotFoundError(f"--train-file {config.train_file}: no such file")
    from flythinker.modeling.loading import check_model_source

    check_model_source(config.generator, "--generator")
    if config.reasoner is not None:
        check_model_source(config.reasoner, "--reasoner")
    if Path(config.output_dir).exists() and not Path(config.output_dir).is_dir():
        raise NotADirectoryError(
            f"--output-dir {config.output_dir}: is a file; expected a (new) run directory"
        )
    resume = config.resume_from_checkpoint
    if resume is not None and config.overwrite:
        raise ValueError(
            "--overwrite deletes the run's checkpoints, --resume-from-checkpoint continues from one: "
            "pass only one of them"
        )
    if resume not in (None, "last"):
        if not Path(resume).is_dir():
            raise FileNotFoundError(
                f"--resume-from-checkpoint {resume}: no such checkpoint directory "
                "(or pass 'last' for the newest complete one in the run directory)"
            )
        problem = checkpoint_problem(Path(resume))
        if problem is not None:
            raise ValueError(
                f"--resume-from-checkpoint {resume}: {problem}; pass 'last' to take the newest intact one"
            )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{_flag(name)} must be one of {', '.join(allowed)}; got {value!r}")


def _check_int(name: str, value: Any, low: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{_flag(name)} must be an integer >= {low}{hint}; got {value!r}")


def _check_float(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, hint: str = "") -> None:  # fmt: skip
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"<= {high:g}")
        allowed = "a finite number" + (" " + " and ".join(bounds) if bounds else "")
        raise ValueError(f"{_flag(name)} must be {allowed}{hint}; got {value!r}")
