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

import contextlib
import copy
import dataclasses
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from era_control import checkpoint, envs, rng
from era_control.buffers import ReplayBuffer, Transition
from era_control.config import RunConfig, help_field, to_dict
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
from era_control.logging import Logger, progress_bar
from era_control.networks import EnsembleMLP
from era_core.cli import UsageError
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


def _deterministic(agent: SAC, device: torch.device) -> Any:
    def policy(observation: np.ndarray) -> np.ndarray:
        return (
            agent.act(torch.as_tensor(observation, device=device), deterministic=True).cpu().numpy()
        )

    return policy


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
    """``cfg`` with ``save_buffer`` decided, before a new run writes anything.

    The default saves the buffer (an exact resume) whenever it fits in the free space of
    ``--out`` twice: a checkpoint is written beside the previous one, then renamed over it.
    Prints the buffer's size in checkpoints, or a warning when resumes will be approximate.

    Raises:
        UsageError: ``--save-buffer`` was asked for and the buffer does not fit.
    """
    size = ReplayBuffer.stored_bytes(
        min(cfg.buffer_size, cfg.steps), cfg.seeds, obs_dim, action_dim
    )
    out = Path(cfg.out).absolute()
    existing = next(p for p in (out, *out.parents) if p.exists())  # --out may not exist yet
    free = shutil.disk_usage(existing).free
    fits = 2 * size <= free
    where = f"{_bytes(size)} per checkpoint, {_bytes(free)} free on --out {cfg.out!r}"
    if cfg.save_buffer and not fits:
        raise UsageError(
            f"--save-buffer true: the replay buffer does not fit twice ({where}); free space, "
            "lower --buffer-size, or pass --save-buffer false (resumes then are approximate)"
        )
    if cfg.save_buffer is None:
        cfg = dataclasses.replace(cfg, save_buffer=fits)
    if cfg.save_buffer:
        print(f"replay buffer in checkpoints: {_bytes(size)} (--save-buffer true)")
    else:
        why = "--save-buffer false" if fits else f"it does not fit twice ({where})"
        print(
            f"warning: checkpoints leave the {_bytes(size)} replay buffer out ({why}): a "
            "--resume refills it from scratch and will not reproduce an uninterrupted run",
            file=sys.stderr,
        )
    return cfg


def _bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


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
    run_dir = Path(run_dir)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = cfg.torch_device()
    seeds = cfg.seed_list()
    agent, train_envs, gens = build(cfg, device)
    obs_dim, action_dim = agent.obs_dim, agent.action_dim
    if cfg.save_buffer is None:  # called without runs.start_run, which decides it
        cfg = resolve_save_buffer(cfg, obs_dim, action_dim)
    buffer = ReplayBuffer(min(cfg.buffer_size, cfg.steps), cfg.seeds, obs_dim, action_dim, device)
    step, episode_return, episode_length = 0, np.zeros(cfg.seeds), np.zeros(cfg.seeds, dtype=int)
    if resume:
        state = checkpoint.load(run_dir / "checkpoint.pt")  # RNG states must stay on the CPU
        saved = state["buffer"]["size"] if state["buffer"] is not None else 0
        if saved > buffer.capacity:
            raise UsageError(
                f"{str(run_dir / 'checkpoint.pt')!r} holds {saved} transitions per seed, more "
                f"than this run's replay capacity of {buffer.capacity} (buffer_size, capped at "
                "steps): it is not this run's checkpoint"
            )
        step, obs = state["step"], state["obs"]
        episode_return, episode_length = state["episode_return"], state["episode_length"]
        agent.load_state_dict(state["agent"])
        agent.load_optimizer_state(state["optimizers"])
        for gen, gen_state in zip(gens, state["generators"], strict=True):
            gen.set_state(gen_state)
        rng.set_global_state(state["global_rng"])
        notes = {}  # what this resume cannot restore, for run.yaml
        if state["buffer"] is not None:
            buffer.load_state_dict(state["buffer"])
        else:
            notes["replay_buffer"] = (
                "replay buffer not in the checkpoint (save_buffer: false): refilled from "
                "scratch, so this run no longer reproduces an uninterrupted one"
            )
        train_envs.close()
        restored = envs.restore_envs(state["envs"], cfg.env, cfg.seeds, [s + step for s in seeds])
        train_envs = restored.envs
        if restored.note is not None:
            notes["env_state"] = restored.note
        if notes:
            checkpoint.note_resume(run_dir, step, **notes)
        for note in notes.values():
            print(f"warning: {note}", file=sys.stderr)
        if restored.obs is not None:  # fresh episodes
            obs, episode_return[:], episode_length[:] = restored.obs, 0.0, 0
    else:
        obs, _ = train_envs.reset(seed=seeds)
    eval_envs = envs.make_vector_env(cfg.env, cfg.seeds)
    logger = Logger(
        run_dir, seeds, resume_step=step if resume else None, tensorboard=cfg.tensorboard
    )

    def save() -> None:
        checkpoint.save(run_dir / "checkpoint.pt", {
            "step": step, "obs": obs, "episode_return": episode_return, "episode_length": episode_length,
            "agent": agent.state_dict(), "optimizers": agent.optimizer_state(),
            "generators": [g.get_state() for g in gens], "global_rng": rng.global_state(),
            "buffer": buffer.state_dict() if cfg.save_buffer else None,
            "envs": envs.snapshot_envs(train_envs), "config": to_dict(cfg),
        })  # fmt: skip
        if on_checkpoint is not None:
            on_checkpoint()

    policy = _deterministic(agent, device)
    metrics: dict[str, Tensor] = {}
    last_eval, log_time, log_step = float("nan"), time.perf_counter(), step
    # The log is closed however the loop ends (a crash included).
    with (
        contextlib.closing(logger),
        checkpoint.StopSignal() as stop,
        progress_bar(cfg.steps, step, run_dir.name) as bar,
    ):
        while step < cfg.steps and not stop.requested:
            if step < cfg.learning_starts:  # uniform warm-up actions, from each seed's generator
                action = rng.rand(gens, (action_dim,), device) * 2.0 - 1.0
            else:
                action = agent.act(torch.as_tensor(obs, device=device))
            action = action.cpu().numpy()
            next_obs, reward, terminated, truncated, info = train_envs.step(action)
            done = terminated | truncated
            real_next = envs.final_observations(next_obs, done, info)
            buffer.add(obs, action, reward, real_next, terminated)
            obs, step = next_obs, step + 1
            episode_return += reward
            episode_length += 1
            if done.any():
                finished = np.flatnonzero(done)
                logger.log(step, {"charts/episodic_return": episode_return[finished],
                                  "charts/episodic_length": episode_length[finished]}, finished)  # fmt: skip
                episode_return[finished], episode_length[finished] = 0.0, 0

            if step >= cfg.learning_starts and len(buffer) >= cfg.batch_size:
                for _ in range(cfg.updates_per_step):
                    metrics = agent.update(buffer.sample(cfg.batch_size, gens))
            if step % cfg.log_every == 0:
                now = time.perf_counter()  # env steps/s per seed since the last log row
                logger.log(step, {**metrics, "charts/sps": (step - log_step) / (now - log_time)})
                log_time, log_step = now, step
            if step % cfg.eval_every == 0 or step == cfg.steps:
                returns = envs.evaluate(
                    policy, eval_envs, [s + 100_000 for s in seeds], cfg.eval_episodes
                )
                logger.log(step, {"eval/return": returns})
                last_eval = float(returns.mean())
            if step % cfg.checkpoint_every == 0:
                save()
            bar.update(1)
            bar.set_postfix(eval_return=f"{last_eval:.1f}", refresh=False)
        save()  # the final state, or where a signal stopped the loop
    eval_envs.close()
    train_envs.close()
    if stop.requested:
        print(f"stopped at step {step}; resume with: era-control train sac --resume {run_dir}")
    return stop.exit_code


def evaluation_policy(cfg: SACConfig, state: dict[str, Any], device: torch.device) -> Any:
    """The deterministic policy ``obs (seeds, obs_dim) -> actions`` stored in a checkpoint."""
    agent, train_envs, _ = build(cfg, device)
    train_envs.close()
    agent.load_state_dict(state["agent"])

    return _deterministic(agent, device)
