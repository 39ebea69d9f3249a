"""Which engine shards the trained model, and the one thing accelerate leaves undone on CPU.

:func:`full_state_dict` gathers a ZeRO-3 / FSDP model's full weights for the final save. accelerate 1.x
enables FSDP only on accelerators: launched with ``configs/accelerate/fsdp_cpu.yaml`` it sets up the gloo
process group and then trains plain DDP, without a word. :func:`enable_fsdp_on_cpu` (called by the
fine-tuning Trainer right after it builds its accelerator) switches accelerate's state to FSDP with the
plugin the launch config describes (its ``FSDP_*`` environment), so ``prepare`` runs accelerate's own
FSDP2 path (``fully_shard``) over gloo, as ``tests/train/sharded_worker.py`` does.
"""

from __future__ import annotations

import os

import torch


def enable_fsdp_on_cpu(trainer) -> None:
    """Make an FSDP launch really shard on CPU (see the module doc); a no-op otherwise."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or trainer.is_fsdp_enabled:
        return
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    PartialState().distributed_type = DistributedType.FSDP
    trainer.accelerator.state.distributed_type = DistributedType.FSDP
    trainer.accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
    trainer.is_fsdp_enabled = True


def is_sharded(trainer) -> bool:
    """Whether the trained model's parameters are split across ranks (ZeRO-3 or FSDP)."""
    return bool(getattr(trainer, "is_deepspeed_enabled", False) and _zero_stage(trainer) == 3) or bool(
        getattr(trainer, "is_fsdp_enabled", False)
    )


def _zero_stage(trainer) -> int:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return int(getattr(plugin, "zero_stage", 0) or 0) if plugin is not None else 0


def full_state_dict(trainer) -> dict[str, torch.Tensor] | None:
    """The gathered full state dict of a sharded model (call on every rank), or None when not sharded."""
    if not is_sharded(trainer):
        return None
    return trainer.accelerator.get_state_dict(trainer.model_wrapped)
