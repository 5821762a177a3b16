"""Several processes (one per GPU, or CPU processes on gloo) training one model under `torchrun`.

The model is wrapped in DistributedDataParallel: it broadcasts rank 0's weights when wrapped
and BatchNorm buffers at every forward. Gradient Routing needs care because its routing pass
takes gate gradients with `torch.autograd.grad`, which never fires DDP's reducer hooks: the
step (`trainer.routing.GradientRouter`) runs that pass under `no_sync()` and averages the
gate gradients across processes with an explicit all-reduce; the main pass is an ordinary
DDP backward. Every replica then applies the same averaged gradients, so replicas stay
identical (tests/test_ddp.py checks this with two gloo processes).

Only the main process (rank 0) writes the run directory, checkpoints and logs, and it alone
evaluates the validation set; training losses are summed over the replicas.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes the run directory, checkpoints and logs."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_type: str, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group `torchrun` describes in the environment (RANK, WORLD_SIZE, ...).

    nccl for CUDA devices, gloo otherwise. A single process (no torchrun) gets a context with
    `world_size == 1` and no process group.
    """
    if not launched_by_torchrun():
        return DistContext()
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


@torch.no_grad()
def broadcast_module(module: nn.Module, ctx: DistContext, src: int = 0) -> None:
    """Copy parameters and buffers from rank `src` to every replica (e.g. after a resume)."""
    if not ctx.enabled:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=src)


def all_reduce_sums(values: Sequence[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Sum per-replica numbers (e.g. loss sums and sample counts) over the replicas."""
    if not ctx.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_object(obj, ctx: DistContext, src: int = 0):
    """Send a picklable object from `src` to every replica (only between our own processes)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def max_parameter_difference(module: nn.Module, ctx: DistContext) -> float:
    """Largest absolute difference of any parameter between this replica and rank 0 (for tests)."""
    if not ctx.enabled:
        return 0.0
    worst = torch.zeros((), dtype=torch.float64)
    for p in module.parameters():
        reference = p.detach().clone()
        dist.broadcast(reference, src=0)
        worst = torch.maximum(worst, (p.detach() - reference).abs().max().double().cpu())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)
