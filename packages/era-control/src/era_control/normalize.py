"""Running observation and reward normalisation for on-policy training, one set of statistics per seed.

Both are ``nn.Module``s whose statistics are buffers, so they travel in the agent's
``state_dict`` (checkpoints, evaluation). Each ensemble member only ever sees its own seed's
envs: its statistics do not depend on the other seeds.
"""

import torch
from torch import Tensor, nn

__all__ = ["RewardScaler", "RunningMeanStd"]


class RunningMeanStd(nn.Module):
    """Mean and variance of a stream of batches, per ensemble member, in float64.

    Batches are merged with the parallel-variance formula of Chan, Golub and LeVeque (1979),
    starting from mean 0, variance 1 and a tiny pseudo-count (as gymnasium's wrappers do).

    Args:
        members: Ensemble size.
        shape: Shape of one sample, e.g. ``(obs_dim,)``; ``()`` for scalars.
        device: Where the statistics live.
        epsilon: Pseudo-count of the initial statistics.
    """

    def __init__(
        self,
        members: int,
        shape: tuple[int, ...] = (),
        device: torch.device | str | None = None,
        epsilon: float = 1e-4,
    ) -> None:
        super().__init__()
        kwargs = {"dtype": torch.float64, "device": device}
        self.register_buffer("mean", torch.zeros(members, 1, *shape, **kwargs))
        self.register_buffer("var", torch.ones(members, 1, *shape, **kwargs))
        self.register_buffer("count", torch.full((), epsilon, **kwargs))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Merge a batch shaped ``(members, batch, *shape)`` into the statistics."""
        x = x.to(torch.float64)
        n = x.shape[1]
        batch_var, batch_mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
        total = self.count + n
        shift = batch_mean - self.mean
        self.mean += shift * (n / total)
        self.var.copy_((self.var * self.count + batch_var * n + shift**2 * (self.count * n / total)) / total)  # fmt: skip
        self.count.copy_(total)

    def normalize(self, x: Tensor, clip: float, epsilon: float = 1e-8) -> Tensor:
        """``clip((x - mean) / sqrt(var + epsilon), -clip, clip)`` in ``x``'s dtype.

        Shape: ``(members, batch, *shape)``, unchanged.
        """
        scaled = (x - self.mean) / torch.sqrt(self.var + epsilon)
        return scaled.clamp(-clip, clip).to(x.dtype)


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
        device: Where the statistics live.
    """

    def __init__(
        self, members: int, envs: int, gamma: float, clip: float, device: torch.device | str | None
    ) -> None:
        super().__init__()
        self.gamma, self.clip = gamma, clip
        self.rms = RunningMeanStd(members, device=device)
        self.register_buffer("returns", torch.zeros(members, envs, dtype=torch.float64, device=device))  # fmt: skip

    @torch.no_grad()
    def forward(self, reward: Tensor, done: Tensor, epsilon: float = 1e-8) -> Tensor:
        """Scale one step's rewards; ``reward`` and ``done`` are shaped ``(members, envs)``."""
        self.returns.mul_(self.gamma).add_(reward)
        self.rms.update(self.returns)
        self.returns.masked_fill_(done, 0.0)
        scaled = reward / torch.sqrt(self.rms.var + epsilon)  # var: (members, 1)
        return scaled.clamp(-self.clip, self.clip).to(reward.dtype)

    def extra_repr(self) -> str:  # noqa: D102 - nn.Module's
        return f"gamma={self.gamma:g}, clip={self.clip:g}"
