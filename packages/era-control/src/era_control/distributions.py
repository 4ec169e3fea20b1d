"""Bounded action distributions on ``[-1, 1]^D`` built from a Gaussian ``N(mean, exp(log_std)^2)``.

- ``tanh_normal``: ``a = tanh(u)``, ``u ~ N(mean, std)`` (Haarnoja et al. 2018; SAC's default).
- ``truncated_normal``: ``N(tanh(mean), std)`` truncated to ``[-1, 1]`` (the ERA authors' SAC).

ERA bounds the entropy of the Gaussian; squashing or truncation lowers it (the bounding bias
that ``delta`` compensates). Both sample with noise from per-seed generators (see ``rng``).
"""

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from era_control import rng
from era_core.entropy import TruncatedNormal, gaussian_entropy

__all__ = [
    "DISTRIBUTIONS",
    "ActionSample",
    "DistributionName",
    "TanhNormal",
    "TruncatedTanhNormal",
    "normal_log_prob",
    "tanh_log_abs_det",
]

DistributionName = Literal["tanh_normal", "truncated_normal"]


class ActionSample(NamedTuple):
    """A reparametrised action with its log-density and an entropy estimate, per state.

    Shapes: ``action`` ``(*batch, D)``; ``log_prob`` and ``entropy`` ``(*batch,)``.
    """

    action: Tensor
    log_prob: Tensor
    entropy: Tensor


class TanhNormal:
    """``tanh(u)``, ``u ~ N(mean, diag(exp(log_std))^2)``; leading axis = ensemble member."""

    def __init__(self, mean: Tensor, log_std: Tensor) -> None:
        self.mean, self.log_std = mean, log_std

    def sample(self, generators: Sequence[torch.Generator]) -> ActionSample:
        """Reparametrised sample; entropy is the one-sample estimate ``-log pi(a)``."""
        noise = rng.randn(generators, self.mean.shape[1:], self.mean.device)
        u = self.mean + self.log_std.exp() * noise
        # log pi(a) = log N(u) - sum log(1 - tanh(u)^2).
        log_normal = -0.5 * noise**2 - self.log_std - 0.5 * math.log(2 * math.pi)
        log_prob = (log_normal - tanh_log_abs_det(u)).sum(-1)
        return ActionSample(torch.tanh(u), log_prob, -log_prob)

    def mode(self) -> Tensor:
        """The deterministic (evaluation) action ``tanh(mean)``."""
        return torch.tanh(self.mean)

    def gaussian_entropy(self) -> Tensor:
        """Entropy of the Gaussian before the squash (what ERA bounds), per state."""
        return gaussian_entropy(self.log_std)


class TruncatedTanhNormal:
    """``N(tanh(mean), exp(log_std)^2)`` truncated to ``[-1, 1]``; closed-form entropy."""

    def __init__(self, mean: Tensor, log_std: Tensor) -> None:
        self.mean, self.log_std = mean, log_std
        self.dist = TruncatedNormal(torch.tanh(mean), log_std.exp(), -1.0, 1.0)

    def sample(self, generators: Sequence[torch.Generator]) -> ActionSample:
        """Reparametrised sample by the inverse CDF of per-seed uniform noise."""
        uniform = rng.rand(generators, self.dist.loc.shape[1:], self.dist.loc.device)
        action = self.dist.icdf(uniform)
        return ActionSample(action, self.dist.log_prob(action).sum(-1), self.dist.entropy().sum(-1))

    def mode(self) -> Tensor:
        """The deterministic (evaluation) action ``tanh(mean)``, the truncated density's mode."""
        return self.dist.loc

    def gaussian_entropy(self) -> Tensor:
        """Entropy of the Gaussian before truncation (what ERA bounds), per state."""
        return gaussian_entropy(self.log_std)


def tanh_log_abs_det(u: Tensor) -> Tensor:
    """``log |d tanh(u) / du| = log(1 - tanh(u)^2)``, elementwise, stable for large ``|u|``.

    Uses ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``.
    """
    return 2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u))


def normal_log_prob(value: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Log-density of ``N(mean, diag(exp(log_std))^2)`` at ``value``, summed over the last dim.

    Shape: ``(*batch, D) -> (*batch,)``.
    """
    z = (value - mean) * torch.exp(-log_std)
    return (-0.5 * z**2 - log_std).sum(-1) - 0.5 * math.log(2 * math.pi) * value.shape[-1]


DISTRIBUTIONS: dict[str, type[TanhNormal] | type[TruncatedTanhNormal]] = {
    "tanh_normal": TanhNormal,
    "truncated_normal": TruncatedTanhNormal,
}
