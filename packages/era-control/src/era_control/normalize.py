"""Running observation and reward normalisation for on-policy training, one set of statistics per seed.

Both work on the NumPy arrays the vector env returns, on the CPU: per env step they are a
handful of tiny array operations, which NumPy runs several times faster than torch. Their
statistics are float64 CPU buffers of an ``nn.Module`` (updated in place through NumPy views),
so they travel in the agent's ``state_dict`` (checkpoints, evaluation). Each ensemble member
only ever sees its own seed's envs: its statistics do not depend on the other seeds.
"""

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["RewardScaler", "RunningMeanStd"]


class RunningMeanStd(nn.Module):
    """Mean and variance of a stream of batches, per ensemble member, in float64.

    Batches are merged with the parallel-variance formula of Chan, Golub and LeVeque (1979),
    starting from mean 0, variance 1 and a tiny pseudo-count (as gymnasium's wrappers do).
    The buffers stay on the CPU whatever device the networks use.

    Args:
        members: Ensemble size.
        shape: Shape of one sample, e.g. ``(obs_dim,)``; ``()`` for scalars.
        epsilon: Pseudo-count of the initial statistics.
    """

    mean: Tensor
    var: Tensor
    count: Tensor

    def __init__(self, members: int, shape: tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(members, 1, *shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(members, 1, *shape, dtype=torch.float64))
        self.register_buffer("count", torch.full((), epsilon, dtype=torch.float64))
        self._views: tuple[tuple[int, ...], tuple[np.ndarray, ...]] = ((), ())

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """NumPy views ``(mean, var, count)`` of the buffers; writing to them updates the buffers.

        Cached (``Tensor.numpy()`` costs several dispatches), and rebuilt if the buffers were
        replaced; ``load_state_dict`` copies in place, so the views stay valid across resumes.
        """
        key = (self.mean.data_ptr(), self.var.data_ptr(), self.count.data_ptr())
        if self._views[0] != key:
            self._views = (key, (self.mean.numpy(), self.var.numpy(), self.count.numpy()))
        return self._views[1]  # type: ignore[return-value]

    def update(self, x: np.ndarray) -> None:
        """Merge a batch shaped ``(members, batch, *shape)`` into the statistics."""
        mean, var, count = self.arrays()
        # Raw ufunc reductions: ndarray.mean/var add several microseconds of Python per call,
        # and this runs at every env step.
        n = x.shape[1]
        batch_mean = np.add.reduce(x, axis=1, dtype=np.float64, keepdims=True) / n
        batch_var = np.add.reduce(np.square(x - batch_mean), axis=1, keepdims=True) / n
        total = count + n
        shift = batch_mean - mean
        var[...] = (var * count + batch_var * n + shift**2 * (count * n / total)) / total
        mean += shift * (n / total)
        count[...] = total

    def normalize(self, x: np.ndarray, clip: float, epsilon: float = 1e-8) -> np.ndarray:
        """``clip((x - mean) / sqrt(var + epsilon), -clip, clip)`` in ``x``'s dtype.

        Shape: ``(members, batch, *shape)``, unchanged.
        """
        mean, var, _ = self.arrays()
        scaled = (x - mean) / np.sqrt(var + epsilon)
        return np.clip(scaled, -clip, clip).astype(x.dtype)


class RewardScaler(nn.Module):
    """Divide rewards by the running std of each env's discounted return.

    The scaling of Engstrom et al. (2020), as in gymnasium's ``NormalizeReward`` and CleanRL's
    PPO: ``G <- gamma * G + r`` per env (reset at episode ends), the std of ``G`` is tracked per
    seed, and ``r / sqrt(var(G) + epsilon)`` is clipped to ``[-clip, clip]``.

    Args:
        members: Ensemble size.
        envs: Envs per member.
        gamma: Discount of the tracked return.
        clip: Bound of the scaled reward.
    """

    returns: Tensor

    def __init__(self, members: int, envs: int, gamma: float, clip: float) -> None:
        super().__init__()
        self.gamma, self.clip = gamma, clip
        self.rms = RunningMeanStd(members)
        self.register_buffer("returns", torch.zeros(members, envs, dtype=torch.float64))
        self._returns = self.returns.numpy()  # in-place view; RunningMeanStd.arrays explains

    def forward(self, reward: np.ndarray, done: np.ndarray, epsilon: float = 1e-8) -> np.ndarray:
        """Scale one step's rewards; ``reward`` and ``done`` are shaped ``(members, envs)``."""
        if self._returns.ctypes.data != self.returns.data_ptr():
            self._returns = self.returns.numpy()
        returns = self._returns
        returns *= self.gamma
        returns += reward
        self.rms.update(returns)
        returns[done] = 0.0
        scaled = reward / np.sqrt(self.rms.arrays()[1] + epsilon)  # var: (members, 1)
        return np.clip(scaled, -self.clip, self.clip)

    def extra_repr(self) -> str:  # noqa: D102 - nn.Module's
        return f"gamma={self.gamma:g}, clip={self.clip:g}"
