"""Training one model on several processes with PyTorch's own engine (torch.distributed + DDP).

Under ``torchrun --nproc_per_node=W script.py`` (or after the script called
``torch.distributed.init_process_group``) `fit` trains one model on W processes ("ranks"):

* every rank draws the same global batch of ``batch_size`` samples, and its noise, from the shared
  seed, and keeps the rows ``rank::W`` of it (so ``batch_size`` must be a multiple of W);
* DistributedDataParallel averages the gradients over the ranks. With equal shards the mean of the
  shard means is the mean over the global batch, so each step follows the step one process takes on
  the same global batch, up to the order of the floating-point additions;
* the logged losses are averaged over the ranks, once per logging interval (one all-reduce);
* rank 0 alone holds the cache lock and writes checkpoints; every rank returns the same model.

Drawing the whole global batch on every rank repeats the sampling W times; in exchange a run on W
processes is, step for step, the run of one process (tests/test_ddp.py checks it on CPU with gloo).
"""
from __future__ import annotations

import atexit
import contextlib
import os

import torch
import torch.distributed as dist

__all__ = ["setup", "rank_and_world", "shard", "wrap", "mean_over_ranks", "from_rank0", "everyone", "barrier",
           "on_rank0"]


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def setup(device: torch.device) -> torch.device:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE,
    MASTER_ADDR, ...), unless the script already did; return the device this rank trains on.

    Backend: nccl for CUDA, gloo for the CPU. Under torchrun with CUDA each rank takes the GPU
    cuda:LOCAL_RANK (a device given with an index is kept). Without torchrun nothing changes.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    if device.type == "cuda" and device.index is None and (launched or _active()):
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if launched and dist.is_available() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave)
    return device


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) when not distributed."""
    return (dist.get_rank(), dist.get_world_size()) if _active() else (0, 1)


def shard(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """This rank's rows rank::W of each tensor of a global batch (all of them on one process)."""
    rank, world = rank_and_world()
    return tensors if world == 1 else tuple(t[rank::world] for t in tensors)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module to call in the loss: DistributedDataParallel(model) on several ranks, else model.

    broadcast_buffers=False: the package's buffers are constants (Fourier frequencies), so there is
    nothing to re-broadcast before every forward pass.
    """
    if not _active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The average of `values` over the ranks (a copy; the same values when not distributed)."""
    if not _active() or values.numel() == 0:
        return values
    total = values.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


def from_rank0(flag: bool) -> bool:
    """Rank 0's `flag` on every rank: decisions that depend on a clock or a file must be taken once."""
    if not _active():
        return flag
    box = [bool(flag)]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def everyone(flag: bool) -> bool:
    """Whether `flag` holds on every rank (the flag itself when not distributed)."""
    if not _active():
        return flag
    flags = [None] * dist.get_world_size()
    dist.all_gather_object(flags, bool(flag))
    return all(flags)


def barrier() -> None:
    """Wait for every rank (nothing when not distributed)."""
    if _active():
        dist.barrier()


def on_rank0(manager) -> contextlib.AbstractContextManager:
    """`manager` on rank 0, a context that does nothing on the other ranks (e.g. the cache lock)."""
    return manager if rank_and_world()[0] == 0 else contextlib.nullcontext()
