"""Divergence guard: stop at the first non-finite loss, gradient norm or weight, never save one.

:class:`DivergenceGuard` (a ``TrainerCallback``) checks the gradient norm before each optimizer step;
the trainer of :func:`guarded_trainer_class` checks every loss and refuses to save non-finite weights.
The error names the step and the last good checkpoint to resume from.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from .checkpoints import last_complete_checkpoint
from .warm_start import boost_warm_start_parameters


class TrainingDivergedError(RuntimeError):
    """Training produced a non-finite loss, gradient norm or weight; nothing non-finite was saved."""


def _last_good(checkpoints: Path) -> str:
    last = last_complete_checkpoint(checkpoints)
    return (
        f"the last good checkpoint is {last} (resume from it with a lower --learning-rate)"
        if last
        else "no checkpoint was saved before it"
    )


class DivergenceGuard(TrainerCallback):
    """Stops training at the first non-finite gradient norm, before the optimizer applies it.

    transformers' ``logging_nan_inf_filter`` would log a NaN loss as the running mean and carry on;
    this callback (with :class:`GuardedTrainer`'s loss and weight checks) raises instead, naming the step.
    Cost: one norm over the gradients and one host sync per optimizer step.
    """

    def __init__(self, checkpoints: Path):
        self.checkpoints = checkpoints

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False, foreach=True)
        if not bool(torch.isfinite(norm)):
            raise TrainingDivergedError(
                f"training diverged at optimizer step {state.global_step + 1}: the gradient norm is {float(norm)} "
                f"(learning rate {args.learning_rate:g}); the step was not applied and no non-finite weight was "
                f"saved; {_last_good(self.checkpoints)}"
            )


def non_finite_parameter(model) -> str | None:
    """Name of the first parameter or buffer holding NaN/inf, or ``None`` (one pass over the weights)."""
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def guarded_trainer_class():
    """The transformers Trainer with two public-method overrides: ``training_step`` raises on a non-finite
    loss (naming the step) and ``save_model`` refuses to write non-finite weights. (Built on first use so
    importing this module does not import the Trainer.)"""
    global _GUARDED_TRAINER
    if _GUARDED_TRAINER is not None:
        return _GUARDED_TRAINER

    class GuardedTrainer(Trainer):
        """Trainer that stops on a non-finite loss and never saves non-finite weights."""

        def __init__(
            self, *args, checkpoints: Path, warm_start_lr_multiplier: float = 1.0, real_tokens=None, **kwargs
        ):
            self.warm_start_lr_multiplier = warm_start_lr_multiplier
            self.real_tokens = real_tokens  # counts the label tokens of every batch trained on
            super().__init__(*args, **kwargs)
            self.checkpoints = checkpoints

        def training_step(self, model, inputs, num_items_in_batch=None):
            if self.real_tokens is not None:
                self.real_tokens.add(inputs)
            loss = super().training_step(model, inputs, num_items_in_batch)
            if not bool(torch.isfinite(loss).all()):
                raise TrainingDivergedError(
                    f"training diverged at optimizer step {self.state.global_step + 1}: the loss is {float(loss.sum())} "
                    f"(learning rate {self.args.learning_rate:g}); no non-finite weight was saved; "
                    f"{_last_good(self.checkpoints)}"
                )
            return loss

        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            from .sharding import enable_fsdp_on_cpu

            enable_fsdp_on_cpu(self)  # an FSDP launch on CPU shards instead of silently running DDP

        def create_optimizer(self, *args, **kwargs):
            """The Trainer's optimizer, with the warm-start parameters (gate α, zero_linear W) in their
            own group at ``lr × warm_start_lr_multiplier`` (``flythinker.train.warm_start``)."""
            optimizer = super().create_optimizer(*args, **kwargs)
            if self.warm_start_lr_multiplier != 1.0:
                inner = getattr(optimizer, "optimizer", optimizer)  # accelerate may wrap it
                boost_warm_start_parameters(inner, self.model, self.warm_start_lr_multiplier)
            return optimizer

        def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
            bad = non_finite_parameter(self.model)
            if bad is not None:
                raise TrainingDivergedError(
                    f"training diverged at optimizer step {self.state.global_step}: weight {bad} holds NaN/inf "
                    f"(learning rate {self.args.learning_rate:g}); it was not saved; {_last_good(self.checkpoints)}"
                )
            return super().save_model(output_dir, _internal_call)

    _GUARDED_TRAINER = GuardedTrainer
    return GuardedTrainer


_GUARDED_TRAINER = None
