"""The ERA entropy targets shared by SAC-ERA and PPO-ERA, and PPO-ERA's ``delta`` and its cap.

``H0`` is set per action dimension; the default targets are named below. SAC-ERA meets ``H0``
exactly on the distribution that acts (``truncated_gaussian_era``), so it needs no ``delta``.
PPO-ERA with ``tanh_normal`` has no closed form: it floors the Gaussian at ``H0 + delta``, and
``delta >= 0`` is learnt to make up for what the squash removes; it must keep ``H0 + delta``
below the Gaussian's maximum entropy ``D * (log_std_max + log sqrt(2 pi e))``.
"""

import math

import torch

from era_core.entropy import DeltaTuner
from era_core.validation import check_range

__all__ = [
    "AUTHORS_LEARNER_TARGET_PER_DIM",
    "AUTHORS_TARGET_PER_DIM",
    "SAC_TARGET_PER_DIM",
    "UNIT_GAUSSIAN_ENTROPY",
    "check_target_entropy",
    "delta_tuner",
]

UNIT_GAUSSIAN_ENTROPY = 0.5 * math.log(2 * math.pi * math.e)
"""Entropy of a unit-variance 1-D Gaussian, ``log sqrt(2 pi e)``."""

SAC_TARGET_PER_DIM = -1.0
"""SAC's automatic-temperature target per action dimension (Haarnoja et al.); SAC-ERA's default,
so that SAC-ERA and SAC aim at the same exploration level and differ only in the mechanism."""

AUTHORS_TARGET_PER_DIM = 0.25
"""The ERA authors' target per action dimension on HumanoidBench, in nats (PPO-ERA's default)."""

AUTHORS_LEARNER_TARGET_PER_DIM = -0.5
"""The default target per action dimension of the ERA authors' SAC learner, in nats."""

# Margin that keeps H0 + delta strictly below the Gaussian's maximum entropy, per action dim.
_MARGIN_PER_DIM = 1e-3


def check_target_entropy(
    per_dim: float, era: bool, log_std_max: float, bounded: bool = True
) -> None:
    """Refuse a per-dimension target entropy that the policy cannot reach.

    Args:
        per_dim: Target entropy per action dimension, in nats.
        era: Whether the target is an ERA floor (then it must also be below the Gaussian's
            maximum ``log_std_max + log sqrt(2 pi e)`` per dimension).
        log_std_max: Upper bound of the Gaussian's log-std.
        bounded: Whether the executed actions have a density on ``[-1, 1]`` (squashed or
            truncated): no such density beats the uniform's ``log 2`` per dimension.

    Raises:
        ValueError: Naming ``target_entropy`` and the allowed range.
    """
    high, why = math.inf, "a finite number of nats"
    if bounded:
        high, why = math.log(2.0), "per action dim: the maximum entropy of a policy on [-1, 1]"
    if era and log_std_max + UNIT_GAUSSIAN_ENTROPY < high:
        high = log_std_max + UNIT_GAUSSIAN_ENTROPY
        why = f"per action dim: the maximum entropy of a Gaussian with log_std <= {log_std_max:g}"
    # Open at both ends: -inf, +inf and NaN are refused too.
    check_range(
        "target_entropy",
        per_dim,
        -math.inf,
        high,
        low_inclusive=False,
        high_inclusive=False,
        why=why,
    )


def delta_tuner(
    target_entropy: float,
    action_dim: int,
    log_std_max: float,
    delta_init: float,
    learnable: bool,
    seeds: int,
    device: torch.device | str | None = None,
) -> DeltaTuner:
    """One ``delta`` per seed, capped where ``H0 + delta`` would leave the Gaussian's range.

    Args:
        target_entropy: ``H0`` in nats, total over action dims.
        action_dim: Action dimensions ``D``.
        log_std_max: Upper bound of the Gaussian's log-std.
        delta_init: Initial (or constant) delta.
        learnable: Learn delta (see :class:`era_core.entropy.DeltaTuner`).
        seeds: Ensemble size; each seed gets its own delta.
        device: Where delta lives.

    Returns:
        The tuner; call its ``clamp_`` after each optimiser step to project delta under the cap.

    Raises:
        ValueError: ``delta_init`` outside ``[0, cap]``.
    """
    max_entropy = action_dim * (log_std_max + UNIT_GAUSSIAN_ENTROPY)
    max_delta = max_entropy - target_entropy - _MARGIN_PER_DIM * action_dim
    check_range(
        "delta_init",
        delta_init,
        0.0,
        max_delta,
        why=f"H0 + delta must stay below the Gaussian's maximum entropy {max_entropy:.4g}",
    )
    return DeltaTuner(target_entropy, delta_init, learnable, (seeds,), max_delta).to(device)
