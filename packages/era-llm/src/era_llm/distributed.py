"""torchrun integration: process group, rank-aware device, and the few collectives the trainer needs.

Without torchrun (``WORLD_SIZE`` unset or 1) every helper degrades to the single-process case.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "Distributed",
    "all_reduce_mean",
    "all_reduce_sum",
    "any_rank",
    "barrier",
    "init_distributed",
    "shutdown",
]


@dataclass(frozen=True)
class Distributed:
    """Where this process sits: rank, world size and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, configs and model weights."""
        return self.rank == 0


def init_distributed(device: str = "auto") -> Distributed:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU) when ``WORLD_SIZE > 1``.

    Args:
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; under
            torchrun CUDA ranks use ``cuda:LOCAL_RANK``.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    use_cuda = device.startswith("cuda")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(0, 1, torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(resolved)
    else:
        resolved = torch.device("cpu")
    return Distributed(dist.get_rank(), dist.get_world_size(), resolved)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _active():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics over ranks (keys must match on every rank)."""
    if not _active() or not values:
        return values
    keys = sorted(values)
    packed = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    return dict(zip(keys, (packed / dist.get_world_size()).tolist(), strict=True))


def all_reduce_sum(value: float, device: torch.device) -> float:
    """Sum a scalar over ranks."""
    if not _active():
        return value
    packed = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    return packed.item()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on at least one rank (e.g. a stop signal)."""
    return all_reduce_sum(float(flag), device) > 0


def shutdown() -> None:
    """Leave the process group."""
    if _active():
        dist.destroy_process_group()
