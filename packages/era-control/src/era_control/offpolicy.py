"""The training loop of the replay-based agents (SAC, TD-MPC2): act, store, learn, log, evaluate.

One loop, so the algorithms differ only in their agents. An agent provides:

- ``generators``: one ``torch.Generator`` per seed (warm-up actions come from them too);
- ``explore(obs, first)``: one exploring action per seed (``first`` marks seeds whose
  episode just started, for agents that warm-start a plan);
- ``updates_due(step, stored)``: how many gradient updates to run after env step ``step``;
- ``learn(buffer)``: one update from the replay buffer, returning per-seed metrics;
- ``evaluation_policy()``: the deterministic policy ``obs -> actions`` (see ``envs.evaluate``);
- ``state_dict``/``load_state_dict`` and ``optimizer_state``/``load_optimizer_state``.

The config must carry ``learning_starts`` (uniform random actions before it) and
``save_buffer`` besides :class:`era_control.config.RunConfig`'s fields.
"""

import contextlib
import dataclasses
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from era_control import checkpoint, envs, rng
from era_control.buffers import ReplayBuffer
from era_control.config import RunConfig, to_dict
from era_control.logging import Logger, progress_bar
from era_core.cli import UsageError

__all__ = ["resolve_save_buffer", "train"]

C = TypeVar("C", bound=RunConfig)


def resolve_save_buffer(cfg: C, buffer_bytes: int) -> C:
    """``cfg`` with ``save_buffer`` decided, before a new run writes anything.

    The default saves the buffer (an exact resume) whenever it fits in the free space of
    ``--out`` twice: a checkpoint is written beside the previous one, then renamed over it.
    Prints the buffer's size in checkpoints, or a warning when resumes will be approximate.

    Raises:
        UsageError: ``--save-buffer`` was asked for and the buffer does not fit.
    """
    save_buffer: bool | None = getattr(cfg, "save_buffer")  # noqa: B009 - not on RunConfig
    out = Path(cfg.out).absolute()
    existing = next(p for p in (out, *out.parents) if p.exists())  # --out may not exist yet
    free = shutil.disk_usage(existing).free
    fits = 2 * buffer_bytes <= free
    where = f"{_bytes(buffer_bytes)} per checkpoint, {_bytes(free)} free on --out {cfg.out!r}"
    if save_buffer and not fits:
        raise UsageError(
            f"--save-buffer true: the replay buffer does not fit twice ({where}); free space, "
            "lower --buffer-size, or pass --save-buffer false (resumes then are approximate)"
        )
    if save_buffer is None:
        cfg = dataclasses.replace(cfg, save_buffer=fits)  # type: ignore[call-arg]
        save_buffer = fits
    if save_buffer:
        print(f"replay buffer in checkpoints: {_bytes(buffer_bytes)} (--save-buffer true)")
    else:
        why = "--save-buffer false" if fits else f"it does not fit twice ({where})"
        print(
            f"warning: checkpoints leave the {_bytes(buffer_bytes)} replay buffer out ({why}): a "
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
    cfg: Any,
    algo: str,
    run_dir: Path,
    resume: bool,
    on_checkpoint: Callable[[], None] | None,
    agent: Any,
    buffer: ReplayBuffer,
    train_envs: gym.vector.SyncVectorEnv,
) -> int:
    """Train (or resume) ``agent`` in ``run_dir``; returns a process exit code.

    A SIGINT/SIGTERM makes the loop save a checkpoint and return ``130``/``143``;
    ``resume=True`` continues from ``run_dir/checkpoint.pt`` so that, on CPU, the
    parameters equal those of an uninterrupted run (when the checkpoints hold the replay
    buffer: ``save_buffer``). ``on_checkpoint`` is called after every checkpoint written.
    """
    device, seeds, gens = buffer.device, cfg.seed_list(), agent.generators
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

    policy = agent.evaluation_policy()
    action_dim = gym.spaces.flatdim(train_envs.single_action_space)
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
                first = torch.as_tensor(episode_length == 0, device=device)
                action = agent.explore(torch.as_tensor(obs, device=device), first)
            action = action.cpu().numpy()
            next_obs, reward, terminated, truncated, info = train_envs.step(action)
            done = terminated | truncated
            real_next = envs.final_observations(next_obs, done, info)
            buffer.add(obs, action, reward, real_next, terminated, done)
            obs, step = next_obs, step + 1
            episode_return += reward
            episode_length += 1
            if done.any():
                finished = np.flatnonzero(done)
                logger.log(step, {"charts/episodic_return": episode_return[finished],
                                  "charts/episodic_length": episode_length[finished]}, finished)  # fmt: skip
                episode_return[finished], episode_length[finished] = 0.0, 0

            for _ in range(agent.updates_due(step, len(buffer))):
                metrics = agent.learn(buffer)
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
        print(f"stopped at step {step}; resume with: era-control train {algo} --resume {run_dir}")
    return stop.exit_code
