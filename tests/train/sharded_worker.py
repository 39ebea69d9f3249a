"""One rank of the sharded-training check, run by ``accelerate launch`` from tests/train/test_sharded.py.

    accelerate launch --config_file configs/accelerate/{deepspeed_zero3_cpu,fsdp_cpu}.yaml \
        tests/train/sharded_worker.py --init DIR --out DIR --phase {train,resume}

``train``: load the tiny FlyThinker from ``--init`` (ZeRO-3: partitioned at load by ``zero.Init``), take
two AdamW steps on this rank's half of a fixed global batch, saving the sharded checkpoint after step 1;
``resume``: load fresh, restore that checkpoint, take step 2. Both then run a probe forward and
consolidate the model into ``out/<phase>/model`` (``save_pretrained``). Rank 0 writes ``out/<phase>/
result.pt``: per-step losses (mean over ranks), step-1 full gradients, the m̄ each rank used in each
forward, m̄ from :func:`full_mean_embedding_norm` on the (sharded) parameter outside forward, the
shard-only value a wrong implementation would get, and the probe logits.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

GLOBAL_BATCH, SEQ, LR = 4, 12, 1e-2


def global_batch(vocab: int) -> torch.Tensor:
    return torch.randint(3, vocab, (GLOBAL_BATCH, SEQ), generator=torch.Generator().manual_seed(1))


def probe_batch(vocab: int) -> torch.Tensor:
    return torch.randint(3, vocab, (2, 10), generator=torch.Generator().manual_seed(2))


def make_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=LR, foreach=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--init", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--phase", choices=["train", "resume"], required=True)
    args = parser.parse_args()

    import torch.distributed as dist
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    from flythinker import FlyThinkerForCausalLM
    from flythinker.kernels.injection import mean_embedding_norm
    from flythinker.modeling.sharded_norm import full_mean_embedding_norm, is_dtensor, is_zero3_param

    try:  # DeepSpeed's optional shared-memory CPU all-reduce is a C++ op JIT-built on first use (minutes
        # on 2 cores): keep plain gloo collectives, which is what the test is about.
        import deepspeed.comm.torch as ds_torch_comm

        ds_torch_comm.build_shm_op = lambda: None
    except ImportError:
        pass
    torch.manual_seed(0)
    accelerator = Accelerator()
    if accelerator.distributed_type == DistributedType.NO and os.environ.get("ACCELERATE_USE_FSDP") == "true":
        # accelerate 1.x enables FSDP only on accelerators: on CPU it initialises the gloo process group
        # and stops there. Switch its (shared) state to FSDP with the plugin the launch config describes
        # (FSDP_* environment), so prepare() runs accelerate's own FSDP2 path (fully_shard) on CPU.
        from accelerate import PartialState
        from accelerate.utils import FullyShardedDataParallelPlugin

        PartialState().distributed_type = DistributedType.FSDP
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
    engine = {DistributedType.DEEPSPEED: "zero3", DistributedType.FSDP: "fsdp2"}.get(
        accelerator.distributed_type
    )
    if engine is None:
        raise SystemExit(f"sharded_worker: expected DeepSpeed or FSDP, got {accelerator.distributed_type}")
    rank, world = dist.get_rank(), dist.get_world_size()
    if (
        engine == "zero3"
    ):  # the CPU config leaves these "auto" (flythinker train's Trainer fills them); no clipping
        settings = accelerator.state.deepspeed_plugin.deepspeed_config
        settings.update(train_micro_batch_size_per_gpu=GLOBAL_BATCH // world, gradient_accumulation_steps=1,
                        gradient_clipping=0.0)  # fmt: skip
    print(
        f"[sharded_worker] {engine} rank {rank}/{world} accelerate says {accelerator.num_processes}",
        flush=True,
    )
    model = FlyThinkerForCausalLM.from_pretrained(args.init, dtype=torch.float32)
    model.train()
    optimizer = make_optimizer(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    inner = accelerator.unwrap_model(model)
    vocab = inner.config.get_text_config().vocab_size
    rows = GLOBAL_BATCH // world
    ids = global_batch(vocab)[rank * rows : (rank + 1) * rows]
    out_dir = args.out / args.phase
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "train" / "checkpoint_step1"

    emb_weight = inner.get_input_embeddings().weight
    result: dict = {"tied": inner.get_output_embeddings().weight is emb_weight, "engine": engine, "world": world, "losses": {}, "mbar_used": {}, "mbar_outside": {},
                    "weight_kind": "dtensor" if is_dtensor(emb_weight) else "zero3" if is_zero3_param(emb_weight) else "tensor",
                    "local_numel": emb_weight.to_local().numel() if is_dtensor(emb_weight) else emb_weight.numel()}  # fmt: skip

    def gather_all(value: torch.Tensor) -> list[float]:
        values = [torch.zeros_like(value) for _ in range(world)]
        dist.all_gather(values, value.contiguous())
        return [float(v) for v in values]

    def record_outside_mbar(key):
        weight = inner.get_input_embeddings().weight
        result["mbar_outside"][key] = gather_all(full_mean_embedding_norm(weight).reshape(1))
        refreshed = inner.refresh_mean_embedding_norm(force=True)  # the model's own API, outside forward
        result.setdefault("mbar_refresh", {})[key] = gather_all(refreshed.detach().reshape(1))
        if is_dtensor(weight):  # what a shard-local computation would give
            result.setdefault("mbar_shard_only", {})[key] = gather_all(
                mean_embedding_norm(weight.to_local()).reshape(1)
            )
        elif is_zero3_param(weight):
            # The GatheredParameters fallback (used where the flat partition is not readable, e.g. NVMe).
            saved, weight.ds_tensor.final_location = weight.ds_tensor.final_location, "force-gather-fallback"
            try:
                fallback = full_mean_embedding_norm(weight)
            finally:
                weight.ds_tensor.final_location = saved
            result.setdefault("mbar_gather_fallback", {})[key] = gather_all(fallback.reshape(1))
            with torch.no_grad():
                plain = weight.detach().float()
                result.setdefault("mbar_shard_only", {})[key] = gather_all(
                    (torch.linalg.vector_norm(plain, dim=-1).mean() if plain.dim() == 2 else plain.sum() * float("nan")).reshape(1)
                )  # fmt: skip

    # What the model's forward actually handed to m̄ and to the fused loss (shape of the weight it saw).
    seen: dict = {"mbar_weight_numel": [], "loss_weight_shape": []}
    mean_norm = inner.fusion.mean_norm

    def recording_mean_norm(weight, force=False):
        seen["mbar_weight_numel"].append(weight.numel())
        return mean_norm(weight, force=force)

    inner.fusion.mean_norm = recording_mean_norm
    import flythinker.modeling.loss_flythinker as mf  # where forward calls the fused loss

    for name in [n for n in dir(mf) if n.endswith("linear_cross_entropy")]:  # the loss functions it calls
        fn = getattr(mf, name)

        def recording_loss(hidden, weight, *a, _fn=fn, **k):
            seen["loss_weight_shape"].append(tuple(weight.shape))
            return _fn(hidden, weight, *a, **k)

        setattr(mf, name, recording_loss)
    result["seen"] = seen

    steps = [1, 2]
    if args.phase == "resume":
        accelerator.load_state(str(ckpt))
        steps = [2]
    record_outside_mbar(f"before_step{steps[0]}")
    for step in steps:
        loss = model(input_ids=ids, labels=ids).loss
        result["mbar_used"][step] = gather_all(inner.fusion.mean_embedding_norm.detach().reshape(1))
        result["losses"][step] = sum(gather_all(loss.detach().reshape(1))) / world
        if engine == "zero3":
            model.backward(loss)
            if step == 1:
                from deepspeed.utils import safe_get_full_grad

                grads = {n: safe_get_full_grad(p) for n, p in inner.named_parameters()}
                result["grads"] = {n: g.detach().clone() for n, g in grads.items() if g is not None}
            model.step()
        else:
            accelerator.backward(loss)
            if step == 1:
                result["grads"] = {
                    n: (p.grad.full_tensor() if is_dtensor(p.grad) else p.grad).detach().clone()
                    for n, p in inner.named_parameters()
                    if p.grad is not None
                }
            optimizer.step()
            optimizer.zero_grad()
        if step == 1 and args.phase == "train":
            accelerator.save_state(str(ckpt))
        record_outside_mbar(f"after_step{step}")

    model.eval()
    with torch.no_grad():
        result["probe_logits"] = model(input_ids=probe_batch(vocab)).logits.detach().clone()
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        inner.save_pretrained(out_dir / "model", state_dict=state, safe_serialization=True)
        torch.save(result, out_dir / "result.pt")
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()


def dtensor_mean_norms(rank: int, world: int, port: int, table: torch.Tensor, out: str) -> None:
    """``torch.multiprocessing.spawn`` target: m̄ of ``table`` distributed by rows, by columns, replicated."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from flythinker.modeling.sharded_norm import full_mean_embedding_norm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        values = {}
        for name, placement in {"rows": Shard(0), "cols": Shard(1), "replicated": Replicate()}.items():
            values[name] = float(full_mean_embedding_norm(distribute_tensor(table, mesh, [placement])))
        gathered = [None] * world
        dist.all_gather_object(gathered, values)
        if rank == 0:
            torch.save(gathered, out)
    finally:
        dist.destroy_process_group()
