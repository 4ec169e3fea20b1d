"""Run directories: the algorithms' registry, creating a run, loading one, evaluating it.

Shared by the CLI and the demo (which must not import each other).
"""

import contextlib
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import yaml

from era_control import checkpoint, config, envs, ppo, sac, tdmpc2
from era_control.logging import METRICS_FILE
from era_core.cli import UsageError, hold_run_dir, replacing_run

__all__ = [
    "ALGORITHMS",
    "RUN_ENTRIES",
    "Algorithm",
    "NewRun",
    "check_device",
    "evaluate_run",
    "load_run",
    "start_run",
]

C = TypeVar("C", bound=config.RunConfig)


@dataclass(frozen=True)
class Algorithm:
    """What the CLI needs to know about a trainer."""

    config: type[config.RunConfig]
    presets: dict[str, dict[str, Any]]
    # (config, run_dir, resume, on_checkpoint) -> exit code
    train: Callable[[Any, Path, bool, Callable[[], None] | None], int]
    evaluation_policy: Callable[[Any, dict[str, Any], Any], Callable[[np.ndarray], np.ndarray]]
    # Whether `--resume --steps N` continues a run to N steps exactly as a fresh N-step run
    # would (nothing in training depends on the total budget).
    extendable: bool
    # (config, obs_dim, action_dim) -> the config with the defaults that depend on the env's
    # sizes and the disk decided, before a new run writes anything.
    prepare: Callable[[Any, int, int], Any] | None = None


ALGORITHMS: dict[str, Algorithm] = {
    "sac": Algorithm(
        sac.SACConfig, sac.PRESETS, sac.train, sac.evaluation_policy, True, sac.resolve_save_buffer
    ),
    # PPO's learning-rate annealing spans the whole budget.
    "ppo": Algorithm(ppo.PPOConfig, ppo.PRESETS, ppo.train, ppo.evaluation_policy, False),
    # learning_starts' burst of updates and the schedule are budget-independent.
    "tdmpc2": Algorithm(
        tdmpc2.TDMPC2Config,
        tdmpc2.PRESETS,
        tdmpc2.train,
        tdmpc2.evaluation_policy,
        True,
        tdmpc2.resolve_save_buffer,
    ),
}

RUN_ENTRIES = ("config.yaml", "run.yaml", METRICS_FILE, "tb", "checkpoint.pt", "eval.json")
"""What a run writes in its directory (``eval.json``: ``era-control eval``)."""


@dataclass(frozen=True)
class NewRun(Generic[C]):
    """A run :func:`start_run` has created."""

    dir: Path
    config: C  # as written to config.yaml: with the defaults start_run decided
    # Call once the run's first checkpoint is on disk (the trainers' ``on_checkpoint``): only
    # then are the files of an earlier run in its directory deleted.
    checkpointed: Callable[[], None]


@contextlib.contextmanager
def start_run(algo: str, cfg: C) -> Generator[NewRun[C]]:
    """Check a new run's settings, then create its directory and own it until the block ends.

    Every check comes before any file is touched: the env (a known id, continuous actions),
    the device, and what the algorithm decides from the env's sizes and the disk (SAC:
    whether checkpoints hold the replay buffer). Then the directory is held
    (``era_core.cli.hold_run_dir``) and ``config.yaml`` (the resolved config) and ``run.yaml``
    are written.

    A directory left by a run killed before its first checkpoint is started again: its files
    are set aside (``era_core.cli.replacing_run``) and deleted at the new run's first
    checkpoint (:attr:`NewRun.checkpointed`); they come back if the new run fails before it.
    A run still in the directory holds its lock, so nothing is touched then.

    Raises:
        UsageError: A setting is refused, the run exists (resume it instead), another process
            holds it, or ``--out`` cannot hold it.
    """
    name = cfg.run_name or "__".join([
        cfg.env.replace("/", "-"), f"{algo}-era" if getattr(cfg, "era", False) else algo,
        f"s{cfg.seed}-{cfg.seed + cfg.seeds - 1}", time.strftime("%Y%m%d-%H%M%S"),
    ])  # fmt: skip
    run_dir = Path(cfg.out) / name
    exists = UsageError(
        f"run directory {str(run_dir)!r} exists: resume it with --resume or pick --run-name"
    )
    if (run_dir / "checkpoint.pt").exists():  # before the lock, which would add its file
        raise exists
    try:
        dims = envs.env_dims(cfg.env)  # refuses e.g. discrete actions
    except ValueError as error:
        raise UsageError(str(error)) from error
    check_device(cfg.device)
    prepare = ALGORITHMS[algo].prepare
    if prepare is not None:
        cfg = prepare(cfg, *dims)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)  # here, so that the error names --out
    except OSError as error:
        raise _unwritable(cfg, run_dir, error) from error
    with hold_run_dir(run_dir):
        if (run_dir / "checkpoint.pt").exists():  # written before the lock was ours
            raise exists
        # An earlier run's entries, and the temporary files of its atomic writes if it was
        # killed during one (era_core.cli.write_atomically).
        earlier = [*RUN_ENTRIES, *(path.name for path in run_dir.glob(".*.tmp"))]
        with replacing_run(run_dir, earlier) as checkpointed:
            info: dict[str, Any] = {"algo": algo, "command": sys.argv}
            if (note := cfg.approximate_resume()) is not None:
                info["resume"] = note
            try:
                config.save_yaml(cfg, run_dir / "config.yaml")
                (run_dir / "run.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
            except OSError as error:
                raise _unwritable(cfg, run_dir, error) from error
            yield NewRun(run_dir, cfg, checkpointed)


def check_device(device: str) -> None:
    """Refuse a malformed device name, or a CUDA device this machine does not have.

    ``auto`` falls back to the CPU.

    Raises:
        UsageError: Naming ``--device``.
    """
    import torch

    if device == "auto":
        return
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise UsageError(
            f"--device {device!r} is not a torch device (cpu, cuda, cuda:N, auto)"
        ) from error
    if kind != "cuda":
        return
    if not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available here; use --device cpu")
    index, count = torch.device(device).index, torch.cuda.device_count()
    if index is not None and index >= count:
        raise UsageError(
            f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )


def _unwritable(cfg: config.RunConfig, run_dir: Path, error: OSError) -> UsageError:
    return UsageError(
        f"--out {cfg.out!r}: cannot create the run directory {str(run_dir)!r} "
        f"({error.strerror or error})"
    )


def load_run(run_dir: Path) -> tuple[str, Algorithm, Any]:
    """The algorithm name, its registry entry and the saved config of a run directory."""
    if not (run_dir / "run.yaml").exists():
        raise UsageError(f"{str(run_dir)!r} is not a run directory (no run.yaml)")
    algo = (config.read_yaml(run_dir / "run.yaml") or {}).get("algo")
    if algo not in ALGORITHMS:
        raise UsageError(f"{str(run_dir / 'run.yaml')!r}: unknown algo {algo!r}")
    spec = ALGORITHMS[algo]
    try:
        cfg = config.load_yaml(spec.config, run_dir / "config.yaml")
    except (ValueError, OSError) as error:
        raise UsageError(f"{str(run_dir / 'config.yaml')!r}: {error}") from error
    return algo, spec, cfg


def evaluate_run(run_dir: str | Path, episodes: int = 10, device: str = "cpu") -> np.ndarray:
    """Deterministic mean return per seed of a run's latest checkpoint."""
    import torch

    run_dir = Path(run_dir)
    _, spec, cfg = load_run(run_dir)
    state = checkpoint.load(run_dir / "checkpoint.pt", map_location=device)
    policy = spec.evaluation_policy(cfg, state, torch.device(device))
    eval_envs = envs.make_vector_env(cfg.env, cfg.seeds)
    # Seeds disjoint from the ones the trainer evaluates on.
    returns = envs.evaluate(policy, eval_envs, [s + 200_000 for s in cfg.seed_list()], episodes)
    eval_envs.close()
    return returns
