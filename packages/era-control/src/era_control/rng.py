"""Random streams: one ``torch.Generator`` per seed of an ensemble, and the global states.

Each ensemble member draws its initial weights, exploration noise, warm-up actions and
replay indices from its own generator, so a member trains exactly as it would alone: seeds in
one process are independent, and adding a seed does not change the others.
"""

import random
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["generators", "global_state", "rand", "randint", "randn", "set_global_state"]


def generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per seed, on ``device``."""
    return [torch.Generator(device).manual_seed(int(seed)) for seed in seeds]


def randn(
    gens: Sequence[torch.Generator], shape: Sequence[int], device: torch.device | str
) -> torch.Tensor:
    """Standard normal noise of shape ``(len(gens), *shape)``; row ``i`` comes from ``gens[i]``."""
    return torch.stack([torch.randn(tuple(shape), generator=g, device=device) for g in gens])


def rand(
    gens: Sequence[torch.Generator], shape: Sequence[int], device: torch.device | str
) -> torch.Tensor:
    """Uniform ``[0, 1)`` noise of shape ``(len(gens), *shape)``; row ``i`` comes from ``gens[i]``."""
    return torch.stack([torch.rand(tuple(shape), generator=g, device=device) for g in gens])


def randint(
    gens: Sequence[torch.Generator], high: int, shape: Sequence[int], device: torch.device | str
) -> torch.Tensor:
    """Integers in ``[0, high)`` of shape ``(len(gens), *shape)``; row ``i`` comes from ``gens[i]``."""
    return torch.stack(
        [torch.randint(high, tuple(shape), generator=g, device=device) for g in gens]
    )


def global_state() -> dict:
    """The process-wide RNG states (Python, NumPy, torch CPU and CUDA), for checkpoints."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 - the legacy global stream
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_state(state: dict) -> None:
    """Restore states captured by :func:`global_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
