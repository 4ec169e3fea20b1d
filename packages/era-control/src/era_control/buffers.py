"""Replay storage for an ensemble: one ring buffer per seed, stored as one tensor per field."""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from era_control import rng

__all__ = ["ReplayBuffer", "Transition"]


class Transition(NamedTuple):
    """A batch of transitions, shaped ``(seeds, batch, ...)``.

    ``terminated`` is 1.0 only where the episode ended in a terminal state; a time-limit
    truncation keeps bootstrapping, so it is not stored (``next_obs`` is then the real final
    observation, not the reset one).
    """

    obs: Tensor
    action: Tensor
    reward: Tensor
    next_obs: Tensor
    terminated: Tensor


class ReplayBuffer:
    """Uniform replay with one independent slice per seed.

    Every ``add`` appends one transition per seed; ``sample`` draws each seed's indices from
    that seed's generator, so a seed's batches do not depend on the other seeds.

    Args:
        capacity: Transitions kept per seed (oldest overwritten first).
        num_seeds: Ensemble size.
        obs_dim: Observation size.
        action_dim: Action size.
        device: Where the storage lives (the GPU when training there).
    """

    def __init__(
        self,
        capacity: int,
        num_seeds: int,
        obs_dim: int,
        action_dim: int,
        device: torch.device | str = "cpu",
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity, self.device = capacity, torch.device(device)
        shape, f32 = (capacity, num_seeds), torch.float32
        self.storage = {  # what stored_bytes counts
            "obs": torch.empty(*shape, obs_dim, dtype=f32, device=device),
            "action": torch.empty(*shape, action_dim, dtype=f32, device=device),
            "reward": torch.empty(*shape, dtype=f32, device=device),
            "next_obs": torch.empty(*shape, obs_dim, dtype=f32, device=device),
            "terminated": torch.empty(*shape, dtype=f32, device=device),
        }
        self.pos, self.size = 0, 0

    @staticmethod
    def stored_bytes(capacity: int, num_seeds: int, obs_dim: int, action_dim: int) -> int:
        """Bytes of a full buffer's :meth:`state_dict` (the write position adds a few more).

        Per transition and seed: float32 obs, action, reward, next_obs and terminated.
        """
        return capacity * num_seeds * (2 * obs_dim + action_dim + 2) * 4

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
    ) -> None:
        """Append one transition per seed; arrays have a leading ``seeds`` axis."""
        values = {
            "obs": obs,
            "action": action,
            "reward": reward,
            "next_obs": next_obs,
            "terminated": terminated,
        }
        for key, value in values.items():
            self.storage[key][self.pos] = torch.as_tensor(value, dtype=torch.float32)
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generators: Sequence[torch.Generator]) -> Transition:
        """``batch_size`` transitions per seed, drawn uniformly with replacement."""
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        index = rng.randint(generators, self.size, (batch_size,), self.device)  # (seeds, batch)
        seed = torch.arange(index.shape[0], device=self.device).unsqueeze(1)
        return Transition(**{key: value[index, seed] for key, value in self.storage.items()})

    def state_dict(self) -> dict:
        """The filled part of the storage plus the write position."""
        return {
            "pos": self.pos,
            "size": self.size,
            **{k: v[: self.size].clone() for k, v in self.storage.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` into a buffer at least as large.

        A larger buffer (a run extended to more steps) continues where a fresh one of its
        size would: a buffer that is not full writes next after its last transition.
        """
        if state["size"] > self.capacity:
            raise ValueError(
                f"saved buffer holds {state['size']} transitions, capacity is {self.capacity}"
            )
        self.size = state["size"]
        self.pos = state["pos"] if self.size == self.capacity else self.size
        for key, value in self.storage.items():
            value[: self.size] = state[key].to(self.device)
