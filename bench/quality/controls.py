"""Controls of the quality experiment: what the reasoner hands the fusion, replaced (hooks, not model API).

Each control is installed on ``model.reasoner`` by :class:`ControlCallback` when training begins and
stays for every measurement of the run (val NLL, ``model.generate``), so the control arm is trained and
measured exactly as the arm it controls except for the reasoner's information:

* :class:`Donor` — a forward pre-hook swaps the reasoner's input ids at real positions for a window of
  other training text: row ``b``'s donor stream is ``pool[o_b : o_b + W]`` with
  ``o_b = crc32(real ids of the row at its first call) mod (len(pool) − W)`` and the token at position
  ``p`` (the row's ``position_ids``) is ``stream[p]``. The stream is fixed at a row's first call (the
  whole sequence in training and evaluation, the prompt at a generation's prefill) and kept for its
  one-token decode steps, so the control is causal and deterministic per sequence. Pads keep their ids.
* :class:`ConstantState` — a forward hook replaces the reasoner's final states by one vector ``h̄``,
  the mean of the (frozen) reasoner's states over real training tokens, so ``W·r`` is a learned bias.
* :class:`OwnEmbedding` — a forward hook replaces them by the generator's own input embedding of the
  same token, ``h_i = E_G[x_i]``: position i then receives ``W·E_G[x_{i−1}]·m̄/‖E_G[x_{i−1}]‖``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import torch
from transformers import TrainerCallback

__all__ = ["Donor", "ConstantState", "OwnEmbedding", "ControlCallback", "donor_pool", "mean_reasoner_state"]


def donor_pool(examples: Sequence[dict[str, Any]]) -> torch.Tensor:
    """The training split's token ids (each encoded example's ``input_ids``) concatenated: the donor text."""
    return torch.tensor([i for example in examples for i in example["input_ids"]], dtype=torch.long)


class Donor:
    """Reasoner input ids → a same-length window of other training text (see the module docstring)."""

    def __init__(self, pool: torch.Tensor, window: int = 2048):
        if pool.ndim != 1 or len(pool) <= window:
            raise ValueError(f"the donor pool needs more than {window} tokens, has {pool.numel()}")
        self.pool = pool
        self.window = window
        self.streams: torch.Tensor | None = None

    def offset(self, real_ids: torch.Tensor) -> int:
        key = zlib.crc32(real_ids.to(torch.int64).cpu().numpy().tobytes())
        return key % (len(self.pool) - self.window)

    def streams_for(self, input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        rows = []
        for b in range(input_ids.shape[0]):
            real = input_ids[b] if mask is None else input_ids[b][mask[b].bool()]
            start = self.offset(real)
            rows.append(self.pool[start : start + self.window])
        return torch.stack(rows).to(input_ids.device)

    def pre_hook(self, module, args, kwargs):
        input_ids = kwargs["input_ids"]
        mask = kwargs.get("attention_mask")
        current = None if mask is None else mask[:, -input_ids.shape[1] :]
        if input_ids.shape[1] > 1 or self.streams is None or len(self.streams) != len(input_ids):
            self.streams = self.streams_for(input_ids, current)
        positions = kwargs["position_ids"].clamp(0, self.window - 1)
        donor = self.streams.gather(1, positions)
        kwargs["input_ids"] = donor if current is None else torch.where(current.bool(), donor, input_ids)
        return args, kwargs

    def install(self, model) -> Any:
        return model.reasoner.register_forward_pre_hook(self.pre_hook, with_kwargs=True)


class ConstantState:
    """The reasoner's final states → one vector ``h̄`` at every position."""

    def __init__(self, mean_state: torch.Tensor):
        self.mean_state = mean_state

    def hook(self, module, args, kwargs, output):
        states = output.last_hidden_state
        output.last_hidden_state = self.mean_state.to(states).expand_as(states)
        return output

    def install(self, model) -> Any:
        if any(p.requires_grad for p in model.reasoner.parameters()):
            raise ValueError("the const control replaces a frozen reasoner's states (its mean is fixed)")
        return model.reasoner.register_forward_hook(self.hook, with_kwargs=True)


class OwnEmbedding:
    """The reasoner's final states → the generator's input embedding of the same tokens."""

    def __init__(self) -> None:
        self.embedding = None

    def hook(self, module, args, kwargs, output):
        states = output.last_hidden_state
        own = self.embedding(kwargs["input_ids"])
        if own.shape != states.shape:
            raise ValueError(
                f"own_embedding needs d_R = d_G (reasoner {states.shape}, embedding {own.shape})"
            )
        output.last_hidden_state = own.to(states.dtype)
        return output

    def install(self, model) -> Any:
        self.embedding = model.generator.get_input_embeddings()
        return model.reasoner.register_forward_hook(self.hook, with_kwargs=True)


@torch.no_grad()
def mean_reasoner_state(reasoner, batches) -> torch.Tensor:
    """``h̄`` = mean of ``reasoner(x).last_hidden_state`` over the real tokens of ``batches`` (fp64 sum)."""
    total, count = None, 0
    reasoner.eval()
    for batch in batches:
        states = reasoner(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        real = batch["attention_mask"].bool()
        summed = states[real].double().sum(0)
        total = summed if total is None else total + summed
        count += int(real.sum())
    return (total / count).float()


class ControlCallback(TrainerCallback):
    """Installs a control on the model when training begins (before step 0's forward) and keeps it until
    :meth:`off`'s callback removes it."""

    def __init__(self, control: Donor | ConstantState | OwnEmbedding):
        self.control = control
        self.handle = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.handle is None:
            self.handle = self.control.install(model)

    def off(self) -> TrainerCallback:
        """A callback that removes the control when training ends. Pass it *after* the measuring callback:
        the final evaluation and generations still see the control, and the final save (which reloads
        the model and compares its logits with the trained model's) sees the model that is saved."""
        return _ControlOff(self)


class _ControlOff(TrainerCallback):
    def __init__(self, owner: ControlCallback):
        self.owner = owner

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.owner.handle is not None:
            self.owner.handle.remove()
            self.owner.handle = None
