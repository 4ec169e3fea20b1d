"""PPO-ERA and PPO (clipped surrogate, GAE) for N seeds at once over gymnasium vector envs.

PPO follows CleanRL's continuous-action PPO (Huang et al. 2022, "The 37 implementation details
of PPO"): orthogonal init, GAE, per-minibatch advantage normalisation, clipped value loss,
observation and reward normalisation, learning-rate annealing, gradient clipping. The two
algorithms differ only in where the policy's log-std comes from:

- **PPO**: a state-independent log-std parameter (CleanRL's ``actor_logstd``); the loss may
  carry an entropy bonus ``-ent_coef * H`` (the classic regulariser; 0 by default as in CleanRL).
- **PPO-ERA** (method.md §1): ``log_std = gaussian_era(raw, H0 + delta)``, so the Gaussian's
  entropy is ``>= H0 + delta``. ``era_level=state``: ``raw`` is a second head of the actor
  network (one floor-respecting std per state, ``GaussianERA``); ``era_level=batch``: ``raw``
  is a state-independent parameter vector (the activation spreads a fixed entropy budget over
  action dims). The loss has no entropy term.

Seeds are a batched ensemble: seed ``s`` steps ``num_envs`` envs of one vector env, and owns
its network members, generator (initial weights, action noise, minibatch order),
observation/reward statistics and gradient-norm clip, so it trains as it would alone.
"""

import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from era_control import checkpoint, envs, rng
from era_control.config import RunConfig, help_field, to_dict
from era_control.distributions import normal_log_prob, tanh_log_abs_det
from era_control.entropy_floor import (
    AUTHORS_TARGET_PER_DIM,
    check_target_entropy,
    delta_tuner,
)
from era_control.logging import Logger, progress_bar
from era_control.networks import EnsembleLinear, EnsembleMLP, clip_grad_norm_per_seed_
from era_control.normalize import RewardScaler, RunningMeanStd
from era_core.entropy import gaussian_entropy
from era_core.nn import GaussianERA
from era_core.validation import check_finite, check_positive, check_range

__all__ = [
    "PPO",
    "PRESETS",
    "PPOConfig",
    "Rollout",
    "RolloutCollector",
    "evaluation_policy",
    "gae",
    "train",
]


@dataclasses.dataclass
class PPOConfig(RunConfig):
    """``era-control train ppo``: PPO-ERA by default, PPO with ``--no-era``."""

    # 2^20 = 512 rollouts of 2048, also a multiple of the rollouts of 2, 4, 8, ... envs.
    steps: int = help_field(
        1_048_576, "environment steps per seed; a multiple of the rollout size num_envs * num_steps"
    )
    era: bool = help_field(
        True, "PPO-ERA (entropy floor by activation, no entropy bonus); --no-era: PPO"
    )
    era_level: Literal["state", "batch"] = help_field(
        "state",
        "ERA: state = GaussianERA on a per-state scale head of the actor; batch = a state-independent log-std vector through gaussian_era",
    )
    distribution: Literal["normal", "tanh_normal"] = help_field(
        "normal",
        "normal: Gaussian, actions clipped to [-1, 1] (CleanRL); tanh_normal: tanh-squashed Gaussian",
    )
    target_entropy: float | None = help_field(
        None,
        f"ERA: target entropy PER ACTION DIM in nats (default: {AUTHORS_TARGET_PER_DIM}, as SAC-ERA)",
    )
    learn_delta: bool | None = help_field(
        None,
        "ERA: learn delta, which makes up for entropy lost to tanh (default: with tanh_normal only)",
    )
    delta_init: float | None = help_field(
        None,
        "ERA: initial (or fixed) delta in nats, total over action dims (default: 0.1 if learnt, else 0)",
    )
    entropy_lr: float = help_field(
        1e-2, "ERA: Adam learning rate of log-delta (tanh_normal; settles within ~1k updates)"
    )
    log_std_min: float = help_field(-8.0, "ERA: lower bound of the Gaussian's log-std")
    log_std_max: float = help_field(0.0, "ERA: upper bound of the Gaussian's log-std")
    log_std_init: float = help_field(0.0, "PPO: initial value of the state-independent log-std")
    ent_coef: float = help_field(
        0.0, "PPO: entropy bonus coefficient (the baseline regulariser; must be 0 with ERA)"
    )
    hidden: tuple[int, ...] = help_field((64, 64), "hidden layer widths of actor and critic")
    activation: Literal["relu", "elu", "tanh"] = help_field("tanh", "hidden activation")
    lr: float = help_field(3e-4, "Adam learning rate of actor and critic")
    anneal_lr: bool = help_field(True, "decay the learning rate linearly to 0 over the run")
    num_envs: int = help_field(1, "envs per seed, stepped together (sync)")
    num_steps: int = help_field(2048, "steps per env in each rollout")
    num_minibatches: int = help_field(32, "minibatches per epoch; must divide num_envs * num_steps")
    update_epochs: int = help_field(10, "passes over each rollout")
    gamma: float = help_field(0.99, "discount factor")
    gae_lambda: float = help_field(0.95, "GAE lambda")
    clip_coef: float = help_field(0.2, "PPO ratio clip (and value clip) range")
    clip_vloss: bool = help_field(True, "clip the value update around the rollout's values")
    vf_coef: float = help_field(0.5, "value loss coefficient")
    max_grad_norm: float = help_field(0.5, "gradient-norm clip, per seed")
    norm_adv: bool = help_field(True, "normalise advantages within each minibatch")
    normalize_obs: bool = help_field(True, "normalise observations by running statistics")
    normalize_reward: bool = help_field(
        True, "scale rewards by the running std of the discounted return"
    )
    clip_obs: float = help_field(10.0, "bound of normalised observations")
    clip_reward: float = help_field(10.0, "bound of scaled rewards")

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
        check_finite("log_std_init", self.log_std_init)  # plain PPO's free log-std: no bounds
        if self.target_entropy is not None:
            check_target_entropy(
                self.target_entropy, self.era, self.log_std_max, self.distribution != "normal"
            )
        if self.learn_delta is None:
            self.learn_delta = self.distribution == "tanh_normal"
        if self.delta_init is None:
            self.delta_init = 0.1 if self.learn_delta else 0.0
        learnt = self.era and self.learn_delta
        check_range("delta_init", self.delta_init, 0.0, low_inclusive=not learnt)
        if self.era and self.ent_coef != 0.0:
            raise ValueError(
                f"ent_coef must be 0 with ERA (the activation replaces the entropy bonus), "
                f"got {self.ent_coef:g}; use --no-era for PPO with an entropy bonus"
            )
        check_range("ent_coef", self.ent_coef, 0.0)
        for name in ("entropy_lr", "lr", "clip_coef", "max_grad_norm", "clip_obs", "clip_reward"):
            check_positive(name, getattr(self, name))
        check_range("vf_coef", self.vf_coef, 0.0)
        check_range("gamma", self.gamma, 0.0, 1.0, high_inclusive=False)
        check_range("gae_lambda", self.gae_lambda, 0.0, 1.0)
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must be one or more positive widths, got {self.hidden}")
        for name in ("num_envs", "num_steps", "num_minibatches", "update_epochs"):
            check_range(name, getattr(self, name), 1)
        if self.batch_size % self.num_minibatches:
            raise ValueError(
                f"num_minibatches must divide num_envs * num_steps = {self.batch_size}, "
                f"got {self.num_minibatches}"
            )
        if self.norm_adv and self.minibatch_size < 2:
            raise ValueError(
                "norm_adv needs minibatches of >= 2 samples: num_envs * num_steps / "
                f"num_minibatches = {self.minibatch_size}; lower num_minibatches or use --no-norm-adv"
            )
        if self.steps % self.batch_size:  # a run is whole rollouts: refuse, never round up
            below = self.steps // self.batch_size * self.batch_size
            nearest = " or ".join(str(n) for n in (below, below + self.batch_size) if n > 0)
            raise ValueError(
                f"steps must be a positive multiple of the rollout size num_envs * num_steps = "
                f"{self.num_envs} * {self.num_steps} = {self.batch_size}, got {self.steps}; "
                f"nearest valid: {nearest}"
            )

    @property
    def batch_size(self) -> int:
        """Env steps per seed in one rollout."""
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        """Samples per seed in one gradient step."""
        return self.batch_size // self.num_minibatches

    def entropy_target(self, action_dim: int) -> float:
        """ERA's ``H0`` in nats for an ``action_dim``-dim action space."""
        per_dim = AUTHORS_TARGET_PER_DIM if self.target_entropy is None else self.target_entropy
        return per_dim * action_dim


PRESETS: dict[str, dict[str, Any]] = {}


def _orthogonal_init_(mlp: EnsembleMLP, generators: Sequence[torch.Generator], gain: float) -> None:
    """CleanRL's ``layer_init``: orthogonal weights (gain sqrt 2; ``gain`` for the output layer), zero biases."""
    linears = [m for m in mlp if isinstance(m, EnsembleLinear)]
    with torch.no_grad():
        for i, layer in enumerate(linears):
            g = gain if i == len(linears) - 1 else math.sqrt(2.0)
            for m, gen in enumerate(generators):
                nn.init.orthogonal_(layer.weight[m], g, generator=gen)
            layer.bias.zero_()


class PPO(nn.Module):
    """Actor, critic, observation/reward statistics and (ERA) the entropy floor of N seeds.

    Args:
        cfg: The run's config.
        generators: One generator per seed (initial weights and all sampling noise).
        obs_dim: Observation size.
        action_dim: Action size (actions live in ``[-1, 1]``).
        device: Where parameters live.
    """

    def __init__(
        self,
        cfg: PPOConfig,
        generators: list[torch.Generator],
        obs_dim: int,
        action_dim: int,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.cfg, self.generators, seeds = cfg, generators, len(generators)
        self.obs_dim, self.action_dim, self.device = obs_dim, action_dim, device
        self.state_level = cfg.era and cfg.era_level == "state"
        heads = 2 * action_dim if self.state_level else action_dim
        self.actor = EnsembleMLP(
            generators, obs_dim, cfg.hidden, heads, cfg.activation, False, device
        )
        self.critic = EnsembleMLP(generators, obs_dim, cfg.hidden, 1, cfg.activation, False, device)
        _orthogonal_init_(self.actor, generators, 0.01)  # near-zero mean: start centred
        _orthogonal_init_(self.critic, generators, 1.0)
        if not self.state_level:
            # PPO: the log-std itself. Batch-level ERA: raw scale (zeros = equal split over dims).
            init = 0.0 if cfg.era else cfg.log_std_init
            self.log_std_param = nn.Parameter(
                torch.full((seeds, 1, action_dim), init, device=device)
            )
        if cfg.era:
            # PPOConfig.__post_init__ resolves both defaults.
            assert cfg.delta_init is not None and cfg.learn_delta is not None
            self.target_entropy = cfg.entropy_target(action_dim)
            self.era = GaussianERA(self.target_entropy, cfg.log_std_min, cfg.log_std_max)
            self.delta = delta_tuner(
                self.target_entropy, action_dim, cfg.log_std_max, cfg.delta_init,
                cfg.learn_delta, seeds, device,
            )  # fmt: skip
        self.obs_rms = RunningMeanStd(seeds, (obs_dim,))
        self.reward_scaler = RewardScaler(seeds, cfg.num_envs, cfg.gamma, cfg.clip_reward)
        params = [p for name, p in self.named_parameters() if not name.startswith("delta.")]
        # eps as CleanRL; the fused kernel does one pass over all parameters instead of ~10
        # small ops per tensor (the update is dispatch-bound at these sizes).
        self.opt = torch.optim.Adam(params, lr=cfg.lr, eps=1e-5, fused=True)
        learn_delta = cfg.era and cfg.learn_delta
        self.delta_opt = (
            torch.optim.Adam(self.delta.parameters(), lr=cfg.entropy_lr) if learn_delta else None
        )

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        """Raw observations ``(seeds, batch, obs_dim)`` as the networks see them (no update)."""
        if not self.cfg.normalize_obs:
            return obs
        return self.obs_rms.normalize(obs, self.cfg.clip_obs)

    def observe(self, obs: np.ndarray) -> Tensor:
        """:meth:`normalize`, as a tensor on the agent's device."""
        return torch.as_tensor(self.normalize(obs), device=self.device)

    def era_target(self) -> Tensor:
        """ERA's ``H0 + delta`` per seed, shaped ``(seeds, 1)`` to broadcast over a batch."""
        return self.delta.era_target.unsqueeze(-1)

    def policy(self, obs: Tensor, era_target: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Gaussian ``(mean, log_std)`` at normalised ``obs``, each ``(seeds, batch, action_dim)``.

        ``era_target`` may pass :meth:`era_target` computed once for many calls (a rollout).
        """
        out = self.actor(obs)
        if not self.cfg.era:
            return out, self.log_std_param.expand_as(out)
        target = self.era_target() if era_target is None else era_target
        if self.state_level:
            mean, raw = out[..., : self.action_dim], out[..., self.action_dim :]
            return mean, self.era(raw, target)
        return out, self.era(self.log_std_param, target).expand_as(out)

    def value(self, obs: Tensor) -> Tensor:
        """``V(obs)``, shape ``(seeds, batch)``."""
        return self.critic(obs).squeeze(-1)

    def squash(self, u: Tensor) -> Tensor:
        """Executed action in ``[-1, 1]`` for a Gaussian sample ``u``."""
        return torch.tanh(u) if self.cfg.distribution == "tanh_normal" else u.clamp(-1.0, 1.0)

    def executed_entropy(self, u: Tensor, log_prob: Tensor, gaussian: Tensor) -> Tensor:
        """Entropy of the executed policy per state (what ERA's delta steers towards H0).

        ``tanh_normal``: the one-sample estimate ``-log pi(tanh(u))`` at the Gaussian sample
        ``u`` of log-density ``log_prob``; ``normal``: the Gaussian's own entropy ``gaussian``
        (PPO's log-probs are the Gaussian's; clipping to [-1, 1] is the env's).
        """
        if self.cfg.distribution == "tanh_normal":
            return tanh_log_abs_det(u).sum(-1) - log_prob
        return gaussian

    def optimizer_state(self) -> dict[str, Any]:
        """Optimiser states, for checkpoints."""
        opts = {"agent": self.opt, "delta": self.delta_opt}
        return {k: o.state_dict() for k, o in opts.items() if o is not None}

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`optimizer_state`."""
        self.opt.load_state_dict(state["agent"])
        if self.delta_opt is not None:
            self.delta_opt.load_state_dict(state["delta"])


class Rollout(NamedTuple):
    """One rollout per seed, each field shaped ``(seeds, batch, ...)`` (time and envs flattened).

    ``u`` is the Gaussian sample (before clip or tanh), ``log_prob`` its log-density under the
    policy that collected it, ``value`` that policy's ``V(obs)``.
    """

    obs: Tensor
    u: Tensor
    log_prob: Tensor
    value: Tensor
    advantage: Tensor
    ret: Tensor


def gae(
    reward: Tensor, value: Tensor, done: Tensor, last_value: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates and value targets (Schulman et al. 2016).

    ``done[t]`` marks an episode that ended at step ``t``: nothing is bootstrapped through it
    (time-limit truncations are bootstrapped in ``reward`` instead, by the caller).

    Args:
        reward: Shape ``(T, *batch)``.
        value: ``V(s_t)``, shape ``(T, *batch)``.
        done: Shape ``(T, *batch)``, 1.0 where the episode ended.
        last_value: ``V(s_T)`` of the observation after the last step, shape ``batch``.
        gamma: Discount.
        lam: GAE lambda.

    Returns:
        ``(advantage, advantage + value)``, both ``(T, *batch)``.
    """
    # Everything but the recursion A_t = delta_t + gamma * lam * live_t * A_{t+1} is vectorised:
    # the loop runs T times per rollout, so it keeps to one fused op per step.
    live = 1.0 - done
    next_value = torch.cat([value[1:], last_value.unsqueeze(0)])
    delta = reward + gamma * live * next_value - value
    decay = (gamma * lam) * live
    advantage = torch.empty_like(delta)
    running = torch.zeros_like(last_value)
    for t in reversed(range(reward.shape[0])):
        running = torch.addcmul(delta[t], decay[t], running, out=advantage[t])
    return advantage, advantage + value


_METRICS = ("loss/policy", "loss/value", "entropy/gaussian", "entropy/policy", "ppo/approx_kl", "ppo/clipfrac", "ppo/grad_norm")  # fmt: skip


def update(agent: PPO, batch: Rollout, lr: float) -> dict[str, Tensor]:
    """``update_epochs`` passes of minibatch PPO over one rollout; returns per-seed means.

    Each seed's minibatches come from its own generator; losses are averaged within a seed
    and summed over seeds, so each seed gets exactly the gradient it would get alone.
    """
    cfg = agent.cfg
    for group in agent.opt.param_groups:
        group["lr"] = lr
    params = [p for group in agent.opt.param_groups for p in group["params"]]
    # The fields packed side by side, so that an epoch's shuffle is one gather and a
    # minibatch is a slice (the update is bound by the number of small ops, not by FLOPs).
    widths = [f.shape[-1] if f.dim() == 3 else 1 for f in batch]
    packed = torch.cat([f if f.dim() == 3 else f.unsqueeze(-1) for f in batch], dim=-1)
    seeds, size, _ = packed.shape
    member = torch.arange(seeds, device=packed.device).unsqueeze(1)
    totals = torch.zeros(len(_METRICS), seeds, device=packed.device)
    for _ in range(cfg.update_epochs):
        order = torch.stack([torch.randperm(size, generator=g, device=packed.device) for g in agent.generators])  # fmt: skip
        shuffled = packed[member, order]
        for start in range(0, size, cfg.minibatch_size):
            parts = shuffled[:, start : start + cfg.minibatch_size].split(widths, dim=-1)
            mb = Rollout(*(p if f.dim() == 3 else p.squeeze(-1) for p, f in zip(parts, batch)))

            # Clipped surrogate: max(-A r, -A clip(r, 1 - eps, 1 + eps)), r = pi(u|s) / pi_old(u|s).
            # With tanh the Jacobian of the squash cancels in r, so r is the Gaussian's ratio.
            mean, log_std = agent.policy(mb.obs)
            log_prob = normal_log_prob(mb.u, mean, log_std)
            log_ratio = log_prob - mb.log_prob
            ratio = log_ratio.exp()
            advantage = mb.advantage
            if cfg.norm_adv:
                std, avg = torch.std_mean(advantage, dim=-1, keepdim=True)
                advantage = (advantage - avg) / (std + 1e-8)
            clipped = ratio.clamp(1.0 - cfg.clip_coef, 1.0 + cfg.clip_coef)
            policy_loss = torch.max(-advantage * ratio, -advantage * clipped).mean(-1)

            # Value loss, optionally clipped around the rollout's values (CleanRL's clip_vloss).
            value = agent.value(mb.obs)
            value_loss = (value - mb.ret).pow(2)
            if cfg.clip_vloss:
                value_clipped = mb.value + (value - mb.value).clamp(-cfg.clip_coef, cfg.clip_coef)
                value_loss = torch.max(value_loss, (value_clipped - mb.ret).pow(2))
            value_loss = 0.5 * value_loss.mean(-1)

            # PPO may add the entropy bonus; PPO-ERA never does (ent_coef = 0 is enforced).
            entropy = gaussian_entropy(log_std)  # per state
            loss = policy_loss + cfg.vf_coef * value_loss
            if cfg.ent_coef:
                loss = loss - cfg.ent_coef * entropy.mean(-1)
            agent.opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            grad_norm = clip_grad_norm_per_seed_(params, cfg.max_grad_norm, len(agent.generators))
            agent.opt.step()

            # ERA's delta grows while the executed policy's entropy is below H0 (as SAC-ERA).
            executed = agent.executed_entropy(mb.u, log_prob.detach(), entropy.detach())
            if agent.delta_opt is not None:
                agent.delta_opt.zero_grad(set_to_none=True)
                agent.delta.loss(executed).backward()
                agent.delta_opt.step()
                agent.delta.clamp_()

            with torch.no_grad():  # in the order of _METRICS
                totals += torch.stack([
                    policy_loss, value_loss, entropy.mean(-1), executed.mean(-1),
                    ((ratio - 1.0) - log_ratio).mean(-1),  # approx. KL(old || new), Schulman's k3
                    ((ratio - 1.0).abs() > cfg.clip_coef).float().mean(-1), grad_norm,
                ])  # fmt: skip
    means = totals / (cfg.update_epochs * cfg.num_minibatches)
    out: dict[str, Tensor] = dict(zip(_METRICS, means, strict=True))
    residual = (batch.ret - batch.value).var(-1)
    out["ppo/explained_variance"] = 1.0 - residual / batch.ret.var(-1)
    if cfg.era:
        out["era/delta"] = agent.delta.delta.detach()
        out["entropy/target"] = agent.era_target().squeeze(-1).detach()  # the floor H0 + delta
    return out


def _crossed(previous: int, step: int, every: int) -> bool:
    """Whether a multiple of ``every`` lies in ``(previous, step]``."""
    return step // every > previous // every


def _deterministic(agent: PPO) -> Callable[[np.ndarray], np.ndarray]:
    """Evaluation policy ``obs (seeds, obs_dim) -> squash(mean)``, statistics frozen."""

    @torch.no_grad()
    def policy(observation: np.ndarray) -> np.ndarray:
        mean, _ = agent.policy(agent.observe(observation[:, None]))
        return agent.squash(mean).squeeze(1).cpu().numpy()

    return policy


class RolloutCollector:
    """Steps the ``seeds * num_envs`` training envs (seed-major) with the policy; returns rollouts.

    Owns what a checkpoint must keep about the envs: the envs themselves (simulator and RNG
    state), the last observation and the running episode returns and lengths.

    Args:
        agent: Acts, and updates its observation/reward statistics with what it sees.
        env_id: The gymnasium id (to rebuild env snapshots).
        logger: Receives ``charts/episodic_*`` when episodes end.
        reset_seeds: Reset seed per env; ``None`` when :meth:`load_state_dict` follows.
    """

    def __init__(
        self, agent: PPO, env_id: str, logger: Logger, reset_seeds: Sequence[int] | None
    ) -> None:
        cfg, self.agent, self.env_id, self.logger = agent.cfg, agent, env_id, logger
        S, N = cfg.seeds, cfg.num_envs
        self.shape = (S, N)
        self.envs = envs.make_vector_env(env_id, S * N)
        self.episode_return, self.episode_length = np.zeros((S, N)), np.zeros((S, N), dtype=int)
        if reset_seeds is not None:
            self.obs = self._see(self.envs.reset(seed=list(reset_seeds))[0])

    def _see(self, obs: np.ndarray) -> np.ndarray:
        """Reshape raw env observations to ``(seeds, envs, obs_dim)``, updating the statistics."""
        obs = obs.reshape(*self.shape, -1)
        if self.agent.cfg.normalize_obs:
            self.agent.obs_rms.update(obs)
        return obs

    @torch.inference_mode()  # leaner than no_grad per op; the rollout never needs autograd
    def collect(self, step: int) -> Rollout:
        """``num_steps`` steps of every env from env step ``step`` (per seed) on, with GAE."""
        agent, cfg, device = self.agent, self.agent.cfg, self.agent.device
        T, (S, N) = cfg.num_steps, self.shape
        # Storage (T, seeds, envs, ...). What the envs produce stays in NumPy until the end:
        # per step, only the policy's forward pass runs in torch.
        obs_buf = np.empty((T, S, N, agent.obs_dim), dtype=np.float32)  # as the networks saw them
        reward_buf, done_buf = np.empty((T, S, N), np.float32), np.empty((T, S, N), np.float32)
        u_buf = torch.empty(T, S, N, agent.action_dim, device=device)
        noise = rng.randn(agent.generators, (T, N, agent.action_dim), device)
        target = agent.era_target() if cfg.era else None  # fixed during the rollout
        for t in range(T):
            obs_buf[t] = agent.normalize(self.obs)
            mean, log_std = agent.policy(torch.as_tensor(obs_buf[t], device=device), target)
            u_buf[t] = u = mean + log_std.exp() * noise[:, t]
            action = agent.squash(u).flatten(0, 1).cpu().numpy()
            next_obs, reward, terminated, truncated, info = self.envs.step(action)
            done_buf[t] = done = (terminated | truncated).reshape(self.shape)
            reward = reward.reshape(self.shape)
            self.obs = self._see(next_obs)
            reward_buf[t] = agent.reward_scaler(reward, done) if cfg.normalize_reward else reward
            if (cut := truncated & ~terminated).any():
                # A time limit is not a terminal state: bootstrap V(final observation).
                final = envs.final_observations(next_obs, cut, info).reshape(*self.shape, -1)
                bootstrap = agent.value(agent.observe(final)).cpu().numpy()
                reward_buf[t] += cfg.gamma * bootstrap * cut.reshape(self.shape)
            self._count_episodes(step + (t + 1) * N, reward, done)

        # The policy did not change during the rollout: log-probs and values in one pass.
        def seed_major(x: Tensor) -> Tensor:  # (T, seeds, envs, ...) -> (seeds, T * envs, ...)
            return x.transpose(0, 1).flatten(1, 2)

        obs, u = seed_major(torch.as_tensor(obs_buf, device=device)), seed_major(u_buf)
        mean, log_std = agent.policy(obs)
        value = agent.value(obs)
        last_value = agent.value(agent.observe(self.obs))
        time_major = value.unflatten(1, (T, N)).transpose(0, 1)
        reward_t, done_t = (torch.as_tensor(b, device=device) for b in (reward_buf, done_buf))
        advantage, ret = gae(reward_t, time_major, done_t, last_value, cfg.gamma, cfg.gae_lambda)
        log_prob = normal_log_prob(u, mean, log_std)
        return Rollout(obs, u, log_prob, value, seed_major(advantage), seed_major(ret))

    def _count_episodes(self, step: int, reward: np.ndarray, done: np.ndarray) -> None:
        """Accumulate raw returns; log each seed's mean over its envs that just finished."""
        self.episode_return += reward
        self.episode_length += 1
        if done.any():
            members = np.flatnonzero(done.any(1))
            count = done.sum(1)[members]
            self.logger.log(step, {
                "charts/episodic_return": (self.episode_return * done).sum(1)[members] / count,
                "charts/episodic_length": (self.episode_length * done).sum(1)[members] / count,
            }, members)  # fmt: skip
            self.episode_return[done], self.episode_length[done] = 0.0, 0

    def state_dict(self) -> dict[str, Any]:
        """Envs (with simulator state), last observation and running episode statistics."""
        return {"envs": envs.snapshot_envs(self.envs), "obs": self.obs,
                "episode_return": self.episode_return, "episode_length": self.episode_length}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any], reset_seeds: list[int]) -> str | None:
        """Continue where :meth:`state_dict` was taken; returns what could not be restored.

        Envs that cannot be snapshotted exactly start fresh episodes from ``reset_seeds``.
        """
        self.envs.close()
        num_envs = self.shape[0] * self.shape[1]
        restored = envs.restore_envs(state["envs"], self.env_id, num_envs, reset_seeds)
        self.envs, self.obs = restored.envs, state["obs"]
        self.episode_return, self.episode_length = state["episode_return"], state["episode_length"]
        if restored.obs is not None:  # fresh episodes
            self.obs = self._see(restored.obs)
            self.episode_return[:], self.episode_length[:] = 0.0, 0
        return restored.note


def train(
    cfg: PPOConfig,
    run_dir: str | Path,
    resume: bool = False,
    on_checkpoint: Callable[[], None] | None = None,
) -> int:
    """Train (or resume) a run in ``run_dir``; returns a process exit code.

    A SIGINT/SIGTERM lets the current rollout and update finish (PPO's unit of work), then
    saves a checkpoint and returns ``130``/``143``; ``resume=True`` continues from
    ``run_dir/checkpoint.pt`` so that, on CPU, the parameters equal an uninterrupted run's.
    ``on_checkpoint`` is called after every checkpoint written.
    """
    run_dir = Path(run_dir)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = cfg.torch_device()
    seeds, iterations = cfg.seed_list(), cfg.steps // cfg.batch_size
    generators = rng.generators(seeds, device)
    obs_dim, action_dim = envs.env_dims(cfg.env)
    agent = PPO(cfg, generators, obs_dim, action_dim, device)
    # RNG states must stay on the CPU: no map_location.
    state = checkpoint.load(run_dir / "checkpoint.pt") if resume else None
    step, iteration = (state["step"], state["iteration"]) if state else (0, 0)
    logger = Logger(run_dir, seeds, resume_step=step if resume else None, tensorboard=cfg.tensorboard)  # fmt: skip
    # Env n of seed s resets with seed s * num_envs + n: independent of the other seeds.
    reset_seeds = [s * cfg.num_envs + n for s in seeds for n in range(cfg.num_envs)]
    collector = RolloutCollector(agent, cfg.env, logger, None if resume else reset_seeds)
    if state:
        agent.load_state_dict(state["agent"])
        agent.load_optimizer_state(state["optimizers"])
        for gen, gen_state in zip(generators, state["generators"], strict=True):
            gen.set_state(gen_state)
        rng.set_global_state(state["global_rng"])
        note = collector.load_state_dict(state["collector"], [s + step for s in reset_seeds])
        if note is not None:
            checkpoint.note_resume(run_dir, step, env_state=note)
            print(f"warning: {note}", file=sys.stderr)
    eval_envs = envs.make_vector_env(cfg.env, cfg.seeds)

    def save() -> None:
        checkpoint.save(run_dir / "checkpoint.pt", {
            "step": step, "iteration": iteration, "agent": agent.state_dict(),
            "optimizers": agent.optimizer_state(), "collector": collector.state_dict(),
            "generators": [g.get_state() for g in generators], "global_rng": rng.global_state(),
            "config": to_dict(cfg),
        })  # fmt: skip
        if on_checkpoint is not None:
            on_checkpoint()

    policy = _deterministic(agent)
    last_eval, log_time, log_step = float("nan"), time.perf_counter(), step
    # The log is closed however the loop ends (a crash included).
    with (
        contextlib.closing(logger),
        checkpoint.StopSignal() as stop,
        progress_bar(iterations * cfg.batch_size, step, run_dir.name) as bar,
    ):
        while iteration < iterations and not stop.requested:
            lr = cfg.lr * (1.0 - iteration / iterations) if cfg.anneal_lr else cfg.lr
            metrics = update(agent, collector.collect(step), lr)
            previous, step, iteration = step, step + cfg.batch_size, iteration + 1
            last = iteration == iterations
            if _crossed(previous, step, cfg.log_every) or last:
                now = time.perf_counter()  # env steps/s per seed since the last log row
                rates = {"charts/sps": (step - log_step) / (now - log_time), "charts/learning_rate": lr}  # fmt: skip
                logger.log(step, {**metrics, **rates})
                log_time, log_step = now, step
            if _crossed(previous, step, cfg.eval_every) or last:
                returns = envs.evaluate(policy, eval_envs, [s + 100_000 for s in seeds], cfg.eval_episodes)  # fmt: skip
                logger.log(step, {"eval/return": returns})
                last_eval = float(returns.mean())
            if _crossed(previous, step, cfg.checkpoint_every):
                save()
            bar.update(cfg.batch_size)
            bar.set_postfix(eval_return=f"{last_eval:.1f}", refresh=False)
        save()  # the final state, or where a signal stopped the loop
    eval_envs.close()
    collector.envs.close()
    if stop.requested:
        print(f"stopped at step {step}; resume with: era-control train ppo --resume {run_dir}")
    return stop.exit_code


def evaluation_policy(
    cfg: PPOConfig, state: dict[str, Any], device: torch.device
) -> Callable[[np.ndarray], np.ndarray]:
    """The deterministic policy ``obs (seeds, obs_dim) -> actions`` stored in a checkpoint."""
    agent = PPO(cfg, rng.generators(cfg.seed_list(), device), *envs.env_dims(cfg.env), device)
    agent.load_state_dict(state["agent"])
    return _deterministic(agent)
