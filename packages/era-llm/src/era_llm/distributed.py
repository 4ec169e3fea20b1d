"""torchrun integration: process group, device, DDP or FSDP2, and the trainer's collectives.

Without torchrun (``WORLD_SIZE`` unset or 1) every helper degrades to the single-process case.
"""

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeGuard

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from era_llm.errors import UsageError
from era_llm.policy import TokenScorer

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule

__all__ = [
    "Distributed",
    "all_reduce_mean",
    "all_reduce_sum",
    "any_rank",
    "barrier",
    "clip_grad_norm",
    "fsdp_available",
    "gathered_weights",
    "gradient_sync",
    "init_distributed",
    "parallelize",
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

    Raises:
        UsageError: An unknown device, or CUDA asked for where there is none.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError as error:
        raise UsageError(
            f"device: unknown device {device!r}; use auto, cpu, cuda or cuda:N"
        ) from error
    use_cuda = device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise UsageError(
            f"device: {device!r} was asked for, but CUDA is not available here "
            f"(torch {torch.__version__}); use --device cpu or auto"
        )
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


def fsdp_available() -> bool:
    """Whether this torch has FSDP2 (``torch.distributed.fsdp.fully_shard``, torch >= 2.6)."""
    if not dist.is_available():
        return False
    import torch.distributed.fsdp as fsdp

    return hasattr(fsdp, "fully_shard") and hasattr(fsdp, "register_fsdp_forward_method")


def parallelize(
    scorer: TokenScorer,
    parallel: Literal["ddp", "fsdp"],
    dist_info: Distributed,
    bf16: bool = False,
    trainable: bool = True,
) -> nn.Module:
    """Make ``scorer`` (a ``TokenScorer``) data-parallel over the torchrun ranks.

    - ``ddp``: every rank keeps the whole model; the returned DDP wrapper averages gradients.
      A frozen scorer (``trainable=False``, the KL reference) is returned as is.
    - ``fsdp``: FSDP2 shards each decoder layer, then the scorer itself as the root, which
      holds the embeddings, final norm and output projection: the scorer's forward gathers
      them, so its direct read of the output projection sees the full weight. ``generate``
      runs the LM outside that forward; it is registered as a forward method of the scorer
      so that FSDP initialises and gathers the same way (generate inside
      ``gathered_weights``). Parameters move to ``dist_info.device`` shard by shard (load
      the model on the CPU).
      With ``bf16`` the layers compute in bfloat16 and reduce gradients in float32.

    In a single process ``scorer`` is returned unchanged.

    Raises:
        ValueError: ``fsdp`` for a model whose decoder has no ``layers`` list.
    """
    if dist_info.world_size == 1:
        return scorer
    if parallel == "ddp":
        return DistributedDataParallel(scorer) if trainable else scorer
    layers = getattr(scorer.model.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"parallel=fsdp: {type(scorer.model).__name__} has no decoder.layers to shard; "
            "use parallel=ddp"
        )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import (
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    # An explicit mesh: FSDP's default would pick CUDA even for a --device cpu run.
    mesh = init_device_mesh(dist_info.device.type, (dist_info.world_size,))
    precision = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=precision)
    fully_shard(scorer, mesh=mesh, mp_policy=precision)
    register_fsdp_forward_method(scorer, "generate")
    return scorer


def _is_fsdp(module: nn.Module) -> TypeGuard["FSDPModule"]:
    if not fsdp_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


@contextlib.contextmanager
def gathered_weights(module: nn.Module) -> Iterator[None]:
    """Under FSDP, every rank holds the whole weights inside this block (no-op otherwise).

    Sampling must not communicate: ranks generate different numbers of tokens and calls
    (dynamic sampling refills on some ranks only), and a per-forward all-gather would leave
    them waiting on each other. So every module is gathered once, kept gathered after its
    forwards, and resharded on exit. This costs the whole weights in the compute dtype for
    the duration of sampling (the float32 master weights, gradients and optimiser state
    stay sharded).
    """
    sharded = [m for m in module.modules() if _is_fsdp(m)]
    # The root keeps its weights after forward anyway (FSDP's default for the root).
    inner = sharded[1:]
    for m in inner:
        m.set_reshard_after_forward(False, recurse=False)
    for m in sharded:
        m.unshard()
    try:
        yield
    finally:
        for m in sharded:
            m.reshard()
        for m in inner:
            m.set_reshard_after_forward(True, recurse=False)


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Backward inside this block reduces gradients over ranks only when ``enabled``.

    Gradient accumulation disables it for all but the last micro-batch, so ranks exchange
    gradients once per optimiser step (DDP ``no_sync``, FSDP ``set_requires_gradient_sync``).
    """
    if _is_fsdp(module):
        module.set_requires_gradient_sync(enabled)
        yield
    elif isinstance(module, DistributedDataParallel) and not enabled:
        with module.no_sync():
            yield
    else:
        yield


def clip_grad_norm(parameters: Iterable[Tensor], max_norm: float) -> float:
    """Clip the global gradient norm in place and return it (before clipping).

    On FSDP's sharded parameters (DTensors) the norm is computed over all shards.
    """
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    # Under FSDP the norm is a replicated DTensor.
    full_tensor = getattr(norm, "full_tensor", None)
    return (full_tensor() if full_tensor is not None else norm).item()
