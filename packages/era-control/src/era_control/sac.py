"""SAC-ERA and SAC (automatic temperature) for N seeds at once.

The two differ only in the entropy mechanism (method.md §1):

- **SAC** (Haarnoja et al. 2018): ``log_std`` squashed into ``[log_std_min, log_std_max]``;
  the losses carry ``-alpha * H`` and ``alpha`` is tuned towards ``target_entropy``.
- **SAC-ERA**: actions are ``N(tanh(mu), sigma)`` truncated to ``[-1, 1]``, and
  ``log_std = truncated_gaussian_era(tanh(mu), raw, H0)`` solves the truncated normal's
  closed-form entropy, so the distribution that acts has entropy ``>= H0`` in every state;
  the actor loss is ``-min Q`` and the critic target has no entropy bonus. No ``delta`` is
  needed: there is no bounding bias left to compensate.

Networks, replay, schedule and evaluation are shared, so runs differ only where they should.
"""

import copy
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from era_control import envs, offpolicy, rng
from era_control.buffers import ReplayBuffer, Transition
from era_control.config import RunConfig, help_field
from era_control.distributions import (
    DISTRIBUTIONS,
    DistributionName,
    TanhNormal,
    TruncatedTanhNormal,
)
from era_control.entropy_floor import (
    AUTHORS_LEARNER_TARGET_PER_DIM,
    AUTHORS_TARGET_PER_DIM,
    SAC_TARGET_PER_DIM,
    check_target_entropy,
)
from era_control.networks import EnsembleMLP
from era_core.functional import (
    gaussian_era,
    truncated_gaussian_era,
    truncated_normal_entropy_bounds,
)
from era_core.validation import check_finite, check_positive, check_range

__all__ = [
    "PRESETS",
    "SAC",
    "SATURATION",
    "SACConfig",
    "build",
    "evaluation_policy",
    "resolve_save_buffer",
    "saturated_fraction",
    "train",
]


@dataclasses.dataclass
class SACConfig(RunConfig):
    """``era-control train sac``: SAC-ERA by default, SAC with ``--no-era``."""

    era: bool = help_field(
        True, "SAC-ERA (entropy floor by activation); --no-era: SAC with auto temperature"
    )
    distribution: DistributionName | None = help_field(  # noqa: RUF009 - returns a dataclasses.field
        None,
        "truncated_normal: N(tanh(mu), std) on [-1, 1] (ERA authors); tanh_normal: tanh-squashed "
        "Gaussian, SAC only (default: truncated_normal for ERA, tanh_normal for SAC)",
    )
    floor: Literal["executed", "authors"] = help_field(
        "executed",
        "SAC-ERA only: executed = sigma solved so the truncated normal that acts has entropy >= H0 "
        "(ours); authors = the Gaussian floored before truncation, log sigma = k*softmax(s) clipped "
        "to [log_std_min, log_std_max], independent of mu (the ERA authors', method.md section 1)",
    )
    target_entropy: float | None = help_field(
        None,
        "target entropy PER ACTION DIM in nats, for SAC's temperature and ERA's floor alike "
        f"(default: SAC's {SAC_TARGET_PER_DIM:g}; the authors use {AUTHORS_TARGET_PER_DIM:g} on "
        f"HumanoidBench, {AUTHORS_LEARNER_TARGET_PER_DIM:g} in their learner's default)",
    )
    alpha_init: float = help_field(1.0, "SAC: initial temperature alpha")
    entropy_lr: float = help_field(3e-4, "SAC: Adam learning rate of the temperature alpha")
    log_std_min: float = help_field(-8.0, "lower bound of the Gaussian's log-std (both algorithms)")
    log_std_max: float = help_field(0.0, "upper bound of the Gaussian's log-std (both algorithms)")
    hidden: tuple[int, ...] = help_field((256, 256), "hidden layer widths of actor and critics")
    activation: Literal["relu", "elu", "tanh"] = help_field(
        "relu", "hidden activation (the authors use elu)"
    )
    critic_layer_norm: bool = help_field(False, "LayerNorm after each hidden layer of the critics")
    lr: float = help_field(3e-4, "Adam learning rate of actor and critics")
    gamma: float = help_field(0.99, "discount factor")
    tau: float = help_field(0.005, "target-network Polyak rate")
    batch_size: int = help_field(256, "transitions per seed per update")
    buffer_size: int = help_field(1_000_000, "replay capacity per seed (capped at steps)")
    learning_starts: int = help_field(
        5_000, "env steps of uniform random actions before updates start"
    )
    updates_per_step: int = help_field(1, "gradient updates per env step (UTD ratio)")
    save_buffer: bool | None = help_field(
        None,
        "store the replay buffer in checkpoints, so --resume continues exactly (default: when "
        "it fits in the free space of --out, twice over); without it a resume is approximate",
    )

    def __post_init__(self) -> None:
        """Validate; every error names the flag and its allowed range."""
        super().__post_init__()
        for name in ("log_std_min", "log_std_max"):  # NaN would pass the comparison below
            check_finite(name, getattr(self, name))
        check_range(
            "log_std_min",
            self.log_std_min,
            None,
            self.log_std_max,
            high_inclusive=False,
            why=f"must be below log_std_max={self.log_std_max:g}",
        )
        if self.distribution is None:
            self.distribution = "truncated_normal" if self.era else "tanh_normal"
        if self.era and self.distribution == "tanh_normal":
            # tanh saturates: with an actor loss of -Q, |mu| grows until the executed entropy
            # is far below any floor on the Gaussian (README, "Where the floor holds").
            raise ValueError(
                "distribution='tanh_normal' cannot keep ERA's floor on the executed actions "
                "(tanh saturation); use distribution='truncated_normal' (the default) or --no-era"
            )
        # The default target is per action dim too, so it is checked before any env exists.
        per_dim = SAC_TARGET_PER_DIM if self.target_entropy is None else self.target_entropy
        check_target_entropy(per_dim, self.era, self.log_std_max)
        if self.era:
            h_max = truncated_normal_entropy_bounds(self.log_std_min, self.log_std_max)[1]
            check_range(
                "target_entropy", per_dim, None, h_max, high_inclusive=False,
                why=f"per action dim: the maximum of ERA's truncated normal with "
                f"log_std_max={self.log_std_max:g}",
            )  # fmt: skip
        check_positive("alpha_init", self.alpha_init)
        for name in ("entropy_lr", "lr", "tau"):
            check_positive(name, getattr(self, name))
        check_range("tau", self.tau, 0.0, 1.0, low_inclusive=False)
        check_range("gamma", self.gamma, 0.0, 1.0, high_inclusive=False)
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must be one or more positive widths, got {self.hidden}")
        # Updates run from the step where both learning_starts has passed and the buffer holds
        # a batch; each bound below keeps that step within the run.
        check_range(
            "batch_size", self.batch_size, 1, self.steps,
            why=f"at most steps={self.steps}: the buffer never holds more transitions than "
            "steps, so no update would ever run",
        )  # fmt: skip
        check_range(
            "buffer_size", self.buffer_size, self.batch_size,
            why=f"at least batch_size={self.batch_size}: a smaller buffer never holds a batch, "
            "so no update would ever run",
        )  # fmt: skip
        check_range(
            "learning_starts", self.learning_starts, 0, self.steps, high_inclusive=False,
            why=f"below steps={self.steps}: the first learning_starts steps act at random and "
            "train nothing",
        )  # fmt: skip
        check_range("updates_per_step", self.updates_per_step, 1)
        # save_buffer=None is resolved by resolve_save_buffer, which knows the env's sizes.

    def approximate_resume(self) -> str | None:
        """Why a resume of this run cannot continue exactly, or ``None``."""
        if self.save_buffer is False:
            return (
                "approximate: checkpoints hold no replay buffer (save_buffer: false), so a "
                "resume refills it from scratch and does not reproduce an uninterrupted run"
            )
        return None

    def entropy_target(self, action_dim: int) -> float:
        """``H0`` in nats for an ``action_dim``-dim action space."""
        per_dim = SAC_TARGET_PER_DIM if self.target_entropy is None else self.target_entropy
        return per_dim * action_dim


PRESETS: dict[str, dict[str, Any]] = {
    # The ERA authors' SAC-ERA settings for HumanoidBench / DMC (method.md §1).
    "paper": {
        "hidden": (512, 512),
        "activation": "elu",
        "critic_layer_norm": True,
        "updates_per_step": 2,
        "learning_starts": 5_000,
        "batch_size": 256,
        "lr": 3e-4,
        "tau": 0.005,
        "gamma": 0.99,
        "distribution": "truncated_normal",
        "log_std_min": -8.0,
        "log_std_max": 0.0,
        "target_entropy": AUTHORS_TARGET_PER_DIM,
    },
    # Only the targets, for like-with-like rows next to SAC's -1 per dim.
    "authors-target": {"target_entropy": AUTHORS_TARGET_PER_DIM},
    "authors-learner-target": {"target_entropy": AUTHORS_LEARNER_TARGET_PER_DIM},
}


class Critic(nn.Module):
    """Twin Q-functions for every seed: one ensemble of ``2 * seeds`` MLPs."""

    def __init__(
        self,
        cfg: SACConfig,
        generators: list[torch.Generator],
        obs_dim: int,
        action_dim: int,
        device: torch.device,
    ) -> None:
        super().__init__()
        twin = [g for g in generators for _ in range(2)]  # member 2i, 2i+1 belong to seed i
        self.net = EnsembleMLP(
            twin, obs_dim + action_dim, cfg.hidden, 1, cfg.activation, cfg.critic_layer_norm, device
        )

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        """Shape: ``(seeds, batch, obs), (seeds, batch, act) -> (seeds, 2, batch)``."""
        seeds, batch, _ = obs.shape
        x = torch.cat([obs, action], -1).repeat_interleave(2, dim=0)
        return self.net(x).view(seeds, 2, batch)


class SAC(nn.Module):
    """Actor, twin critics, target critics and (SAC) the temperature alpha of N seeds.

    Args:
        cfg: The run's config.
        generators: One generator per seed (initial weights and all sampling noise).
        obs_dim: Observation size.
        action_dim: Action size (actions live in ``[-1, 1]``).
        device: Where parameters live.
    """

    def __init__(
        self,
        cfg: SACConfig,
        generators: list[torch.Generator],
        obs_dim: int,
        action_dim: int,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.cfg, self.generators, seeds = cfg, generators, len(generators)
        self.obs_dim, self.action_dim = obs_dim, action_dim
        assert cfg.distribution is not None  # SACConfig.__post_init__ picks the default
        self.distribution = DISTRIBUTIONS[cfg.distribution]
        self.actor = EnsembleMLP(
            generators, obs_dim, cfg.hidden, 2 * action_dim, cfg.activation, False, device
        )
        self.critic = Critic(cfg, generators, obs_dim, action_dim, device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.target_entropy = cfg.entropy_target(action_dim)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr)
        self.entropy_opt = None  # SAC-ERA has no entropy controller: the activation is exact
        if not cfg.era:
            self.log_alpha = nn.Parameter(
                torch.full((seeds,), math.log(cfg.alpha_init), device=device)
            )
            self.entropy_opt = torch.optim.Adam([self.log_alpha], lr=cfg.entropy_lr)

    def policy(self, obs: Tensor) -> TanhNormal | TruncatedTanhNormal:
        """The action distribution at ``obs`` (``(seeds, batch, obs_dim)``)."""
        mean, raw_scale = self.actor(obs).chunk(2, dim=-1)
        lo, hi = self.cfg.log_std_min, self.cfg.log_std_max
        if self.cfg.era and self.cfg.floor == "authors":
            log_std = gaussian_era(raw_scale, self.target_entropy, lo, hi)
        elif self.cfg.era:
            log_std = truncated_gaussian_era(
                torch.tanh(mean), raw_scale, self.target_entropy, lo, hi
            )
        else:
            log_std = lo + 0.5 * (hi - lo) * (torch.tanh(raw_scale) + 1.0)
        return self.distribution(mean, log_std)

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """One action per seed for a batch of observations, shape ``(seeds, obs_dim) -> (seeds, act_dim)``."""
        pi = self.policy(obs.unsqueeze(1))
        return (pi.mode() if deterministic else pi.sample(self.generators).action).squeeze(1)

    def explore(self, obs: Tensor, first: Tensor) -> Tensor:
        """An exploring action per seed (``first`` is unused: SAC keeps nothing across steps)."""
        return self.act(obs)

    def updates_due(self, step: int, stored: int) -> int:
        """Gradient updates after env step ``step``: from ``learning_starts`` on, once a batch is stored."""
        ready = step >= self.cfg.learning_starts and stored >= self.cfg.batch_size
        return self.cfg.updates_per_step if ready else 0

    def learn(self, buffer: ReplayBuffer) -> dict[str, Tensor]:
        """One :meth:`update` on a batch drawn from ``buffer`` with the seeds' generators."""
        return self.update(buffer.sample(self.cfg.batch_size, self.generators))

    def evaluation_policy(self) -> Callable[[np.ndarray], np.ndarray]:
        """The deterministic policy ``obs (seeds, obs_dim) -> tanh(mean)``."""
        device = next(self.actor.parameters()).device

        def policy(observation: np.ndarray) -> np.ndarray:
            obs = torch.as_tensor(observation, device=device)
            return self.act(obs, deterministic=True).cpu().numpy()

        return policy

    def update(self, batch: Transition) -> dict[str, Tensor]:
        """One gradient step of critics, actor, entropy controller and targets.

        Losses are averaged over each seed's batch and summed over seeds, so every seed
        receives exactly the gradient it would get alone. Returns per-seed metrics.
        """
        cfg, era = self.cfg, self.cfg.era
        alpha = None if era else self.log_alpha.exp().detach().unsqueeze(-1)  # (seeds, 1)

        # Critics: y = r + gamma * (1 - terminated) * (min_j Q'_j(s', a') - alpha * log pi(a'|s')),
        # a' ~ pi(.|s'). SAC-ERA has no entropy bonus: the activation keeps the entropy up.
        with torch.no_grad():
            next_sample = self.policy(batch.next_obs).sample(self.generators)
            next_q = self.critic_target(batch.next_obs, next_sample.action).min(dim=1).values
            if alpha is not None:  # SAC
                next_q = next_q - alpha * next_sample.log_prob
            y = batch.reward + cfg.gamma * (1.0 - batch.terminated) * next_q
        q = self.critic(batch.obs, batch.action)  # (seeds, 2, batch)
        critic_loss = (q - y.unsqueeze(1)).pow(2).mean(-1).sum(1)  # per seed, both critics
        _descend(self.critic_opt, critic_loss.sum())

        # Actor: SAC minimises E[alpha * log pi(a|s) - min_j Q_j(s, a)]; SAC-ERA just E[-min_j Q_j(s, a)].
        pi = self.policy(batch.obs)
        sample = pi.sample(self.generators)
        self.critic.requires_grad_(False)  # the actor's loss must not move the critics
        q_pi = self.critic(batch.obs, sample.action).min(dim=1).values
        self.critic.requires_grad_(True)
        actor_loss = (-q_pi if alpha is None else alpha * sample.log_prob - q_pi).mean(-1)
        _descend(self.actor_opt, actor_loss.sum())

        # SAC's temperature: alpha grows while H < target (SB3's log-alpha loss).
        metrics = {}
        if not era:
            alpha_loss = -(
                self.log_alpha.unsqueeze(-1) * (sample.log_prob.detach() + self.target_entropy)
            ).mean(-1)
            _descend(self.entropy_opt, alpha_loss.sum())  # type: ignore[arg-type]
            metrics["sac/alpha"] = self.log_alpha.exp().detach()

        # Targets: theta' <- (1 - tau) * theta' + tau * theta.
        with torch.no_grad():
            for target, online in zip(
                self.critic_target.parameters(), self.critic.parameters(), strict=True
            ):
                target.lerp_(online, cfg.tau)

        return metrics | {
            "loss/critic": critic_loss.detach(),
            "loss/actor": actor_loss.detach(),
            "q/mean": q.detach().mean(dim=(1, 2)),
            # What acts: closed form for the truncated normal, one-sample -log pi for tanh_normal.
            "entropy/executed": sample.entropy.detach().mean(-1),
            "entropy/executed_min": sample.entropy.detach().min(-1).values,
            "action/saturated": saturated_fraction(pi.mean.detach()),
            "entropy/target": torch.full_like(q_pi[:, 0], self.target_entropy).detach(),
            "entropy/gaussian": pi.gaussian_entropy().detach().mean(-1),
        }

    def optimizer_state(self) -> dict[str, Any]:
        """Optimiser states, for checkpoints."""
        opts = {"actor": self.actor_opt, "critic": self.critic_opt, "entropy": self.entropy_opt}
        return {k: o.state_dict() for k, o in opts.items() if o is not None}

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`optimizer_state`."""
        self.actor_opt.load_state_dict(state["actor"])
        self.critic_opt.load_state_dict(state["critic"])
        if self.entropy_opt is not None:
            self.entropy_opt.load_state_dict(state["entropy"])


SATURATION = 0.99
"""An action dim is saturated when ``|tanh(mu)| > SATURATION``: the mode sits at the boundary."""


def saturated_fraction(mean: Tensor) -> Tensor:
    """Per seed, the fraction of (state, action dim) pairs with ``|tanh(mean)| > SATURATION``.

    Shape: ``(seeds, batch, D) -> (seeds,)``.
    """
    return (torch.tanh(mean).abs() > SATURATION).float().mean(dim=(1, 2))


def _descend(optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def build(
    cfg: SACConfig, device: torch.device | None = None
) -> tuple[SAC, Any, list[torch.Generator]]:
    """The agent, training envs and per-seed generators of a fresh run."""
    device = device or cfg.torch_device()
    generators = rng.generators(cfg.seed_list(), device)
    train_envs = envs.make_vector_env(cfg.env, cfg.seeds)
    obs_dim = gym.spaces.flatdim(train_envs.single_observation_space)
    action_dim = gym.spaces.flatdim(train_envs.single_action_space)
    return SAC(cfg, generators, obs_dim, action_dim, device), train_envs, generators


def resolve_save_buffer(cfg: SACConfig, obs_dim: int, action_dim: int) -> SACConfig:
    """``cfg`` with ``save_buffer`` decided from the replay buffer's size (``offpolicy.resolve_save_buffer``)."""
    capacity = min(cfg.buffer_size, cfg.steps)
    return offpolicy.resolve_save_buffer(
        cfg, ReplayBuffer.stored_bytes(capacity, cfg.seeds, obs_dim, action_dim)
    )


def train(
    cfg: SACConfig,
    run_dir: str | Path,
    resume: bool = False,
    on_checkpoint: Callable[[], None] | None = None,
) -> int:
    """Train (or resume) a run in ``run_dir``; returns a process exit code.

    A SIGINT/SIGTERM makes the loop save a checkpoint and return ``130``/``143``;
    ``resume=True`` continues from ``run_dir/checkpoint.pt`` so that, on CPU, the
    parameters equal those of an uninterrupted run (when the checkpoints hold the replay
    buffer: ``save_buffer``). ``on_checkpoint`` is called after every checkpoint written.
    """
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = cfg.torch_device()
    agent, train_envs, _ = build(cfg, device)
    if cfg.save_buffer is None:  # called without runs.start_run, which decides it
        cfg = resolve_save_buffer(cfg, agent.obs_dim, agent.action_dim)
    capacity = min(cfg.buffer_size, cfg.steps)
    buffer = ReplayBuffer(capacity, cfg.seeds, agent.obs_dim, agent.action_dim, device)
    return offpolicy.train(
        cfg, "sac", Path(run_dir), resume, on_checkpoint, agent, buffer, train_envs
    )


def evaluation_policy(cfg: SACConfig, state: dict[str, Any], device: torch.device) -> Any:
    """The deterministic policy ``obs (seeds, obs_dim) -> actions`` stored in a checkpoint."""
    agent, train_envs, _ = build(cfg, device)
    train_envs.close()
    agent.load_state_dict(state["agent"])
    return agent.evaluation_policy()
