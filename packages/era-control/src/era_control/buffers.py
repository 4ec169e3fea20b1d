"""Replay storage for an ensemble: one ring buffer per seed, stored as one tensor per field.

:class:`ReplayBuffer` samples single transitions (SAC); :class:`SequenceReplayBuffer` samples
sub-trajectories of consecutive transitions of one episode (TD-MPC2).
"""

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from era_control import rng

__all__ = ["ReplayBuffer", "SequenceReplayBuffer", "Trajectory", "Transition"]


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
        done: np.ndarray | None = None,
    ) -> None:
        """Append one transition per seed; arrays have a leading ``seeds`` axis.

        ``done`` (terminated or truncated: the episode ended) matters to
        :class:`SequenceReplayBuffer` only; uniform replay needs no episode boundaries.
        """
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
        return Transition(*(self.storage[key][index, seed] for key in Transition._fields))

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


class Trajectory(NamedTuple):
    """A batch of sub-trajectories of ``length`` steps, time-major after the seed axis.

    Shapes: ``obs`` ``(seeds, length + 1, batch, obs_dim)`` (the start observation, then each
    step's next observation), ``action`` ``(seeds, length, batch, action_dim)``, ``reward`` and
    ``terminated`` ``(seeds, length, batch)``. Only the last step can be terminal.
    """

    obs: Tensor
    action: Tensor
    reward: Tensor
    terminated: Tensor


class SequenceReplayBuffer(ReplayBuffer):
    """Replay of sub-trajectories of ``length`` consecutive transitions within one episode.

    Each stored transition records how many transitions of its episode end with it
    (``run``, capped at ``length``): a window ending at position ``e`` is one episode when
    ``run[e] == length``, and it is still whole when its first transition has not been
    overwritten since ``e`` was written. Windows are drawn uniformly among those, per seed from
    that seed's generator (rejection: few windows are invalid, ``length - 1`` per episode).

    Args:
        capacity: Transitions kept per seed (oldest overwritten first).
        num_seeds: Ensemble size.
        obs_dim: Observation size.
        action_dim: Action size.
        length: Transitions per sub-trajectory (TD-MPC2's horizon).
        device: Where the storage lives.
    """

    def __init__(
        self,
        capacity: int,
        num_seeds: int,
        obs_dim: int,
        action_dim: int,
        length: int,
        device: torch.device | str = "cpu",
    ) -> None:
        if not 1 <= length <= capacity:
            raise ValueError(f"length must be in [1, capacity={capacity}], got {length}")
        super().__init__(capacity, num_seeds, obs_dim, action_dim, device)
        self.length = length
        self.storage["run"] = torch.zeros(capacity, num_seeds, dtype=torch.int32, device=device)
        self.ended = np.ones(num_seeds, dtype=bool)  # the last stored transition ended an episode

    @staticmethod
    def stored_bytes(capacity: int, num_seeds: int, obs_dim: int, action_dim: int) -> int:
        """:meth:`ReplayBuffer.stored_bytes` plus the int32 run length per transition."""
        return (
            ReplayBuffer.stored_bytes(capacity, num_seeds, obs_dim, action_dim)
            + capacity * num_seeds * 4
        )

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        done: np.ndarray | None = None,
    ) -> None:
        """Append one transition per seed; ``done`` (required) marks episodes that ended."""
        if done is None:
            raise ValueError("SequenceReplayBuffer.add needs done: where each episode ended")
        previous = self.storage["run"][(self.pos - 1) % self.capacity].cpu().numpy()
        run = np.where(self.ended, 1, np.minimum(previous + 1, self.length))
        self.storage["run"][self.pos] = torch.as_tensor(run, dtype=torch.int32)
        self.ended = np.asarray(done, dtype=bool).copy()
        super().add(obs, action, reward, next_obs, terminated)

    def _whole(self, start: Tensor, seed: int) -> Tensor:
        """Whether the windows beginning at positions ``start`` are whole, for one seed."""
        end = (start + self.length - 1) % self.capacity
        age = (self.pos - 1 - end) % self.capacity  # steps since ``end`` was written
        return (self.storage["run"][end, seed] == self.length) & (age + self.length <= self.size)

    def sample_sequences(
        self, batch_size: int, generators: Sequence[torch.Generator]
    ) -> Trajectory:
        """``batch_size`` whole windows per seed, drawn uniformly with replacement."""
        if self.size < self.length:
            raise RuntimeError(
                f"the buffer holds {self.size} transitions, fewer than length={self.length}"
            )
        starts = []
        for seed, gen in enumerate(generators):
            start = torch.randint(self.size, (batch_size,), generator=gen, device=self.device)
            for rounds in itertools.count(1):
                if (whole := self._whole(start, seed)).all():
                    break
                if rounds % 64 == 0 and not self._whole(torch.arange(self.size, device=self.device), seed).any():  # fmt: skip
                    raise RuntimeError(
                        f"seed {seed}: no episode of {self.length} transitions stored yet"
                    )
                redraw = ~whole
                start[redraw] = torch.randint(
                    self.size, (int(redraw.sum()),), generator=gen, device=self.device
                )
            starts.append(start)
        offsets = torch.arange(self.length, device=self.device)
        index = (
            torch.stack(starts).unsqueeze(1) + offsets[:, None]
        ) % self.capacity  # (seeds, L, B)
        seed = torch.arange(len(generators), device=self.device)[:, None, None]
        field = {key: value[index, seed] for key, value in self.storage.items()}
        obs = torch.cat([field["obs"][:, :1], field["next_obs"]], dim=1)
        return Trajectory(obs, field["action"], field["reward"], field["terminated"])

    def state_dict(self) -> dict:
        """:meth:`ReplayBuffer.state_dict` plus whether the last transition ended an episode."""
        return {**super().state_dict(), "ended": self.ended.copy()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` into a buffer at least as large."""
        super().load_state_dict(state)
        self.ended = state["ended"].copy()
