"""torchrun integration: process-group setup and batch-norm statistics across ranks."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Dist", "average_bn_stats", "max_over_ranks", "setup"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (world of one without torchrun)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that logs and writes files."""
        return self.rank == 0


def setup(device: str) -> Dist:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (NCCL on CUDA, gloo on CPU).

    Args:
        device: ``auto``, ``cpu`` or ``cuda``.

    Returns:
        Rank, world size and the device this rank computes on.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
    if device == "cuda":
        # Before the process group: NCCL and the object collectives use the current device.
        torch.cuda.set_device(torch_device)
    if world_size > 1 and not dist.is_initialized():
        if device == "cuda":
            dist.init_process_group("nccl", device_id=torch_device)
        else:
            dist.init_process_group("gloo")
    return Dist(dist.get_rank() if world_size > 1 else 0, world_size, torch_device)


def max_over_ranks(ctx: Dist, value: int) -> int:
    """The largest ``value`` any rank passes (collective under DDP; ``value`` alone otherwise)."""
    if ctx.world_size == 1:
        return value
    # On the process group's device: NCCL serves CUDA tensors only.
    flag = torch.tensor(value, device=ctx.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag)


def average_bn_stats(model: nn.Module) -> None:
    """Average batch-norm running statistics over ranks (timm's ``--dist-bn reduce``)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for buffer in (module.running_mean, module.running_var):
                if buffer is None:  # typed optional; a module tracking running stats has both
                    continue
                dist.all_reduce(buffer)
                buffer /= dist.get_world_size()
