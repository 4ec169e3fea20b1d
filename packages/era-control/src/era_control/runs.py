"""Run directories: the algorithms' registry, creating a run, loading one, evaluating it.

Shared by the CLI and the demo (which must not import each other).
"""

import contextlib
import shutil
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from era_control import checkpoint, config, envs, ppo, sac
from era_core.cli import LOCK_FILE, UsageError, hold_run_dir

__all__ = ["ALGORITHMS", "Algorithm", "evaluate_run", "load_run", "start_run"]


@dataclass(frozen=True)
class Algorithm:
    """What the CLI needs to know about a trainer."""

    config: type[config.RunConfig]
    presets: dict[str, dict[str, Any]]
    train: Callable[[Any, Path, bool], int]
    evaluation_policy: Callable[[Any, dict[str, Any], Any], Callable[[np.ndarray], np.ndarray]]
    # Whether `--resume --steps N` continues a run to N steps exactly as a fresh N-step run
    # would (nothing in training depends on the total budget).
    extendable: bool


ALGORITHMS: dict[str, Algorithm] = {
    "sac": Algorithm(sac.SACConfig, sac.PRESETS, sac.train, sac.evaluation_policy, True),
    # PPO's learning-rate annealing spans the whole budget.
    "ppo": Algorithm(ppo.PPOConfig, ppo.PRESETS, ppo.train, ppo.evaluation_policy, False),
}


@contextlib.contextmanager
def start_run(algo: str, cfg: config.RunConfig) -> Generator[Path]:
    """Create the run directory and own it until the block ends (``era_core.cli.hold_run_dir``).

    Writes ``config.yaml`` (the resolved config) and ``run.yaml``.

    A directory left by a run killed before its first checkpoint is started again; a run still
    in it holds its lock, so nothing is deleted then.

    Raises:
        UsageError: The run exists (resume it instead), another process holds it, or ``--out``
            cannot hold it.
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
        run_dir.mkdir(parents=True, exist_ok=True)  # here, so that the error names --out
    except OSError as error:
        raise _unwritable(cfg, run_dir, error) from error
    with hold_run_dir(run_dir):
        if (run_dir / "checkpoint.pt").exists():  # written before the lock was ours
            raise exists
        try:
            if (run_dir / "run.yaml").exists():  # killed before its first checkpoint
                for path in run_dir.iterdir():
                    if path.name == LOCK_FILE:
                        continue
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
            config.save_yaml(cfg, run_dir / "config.yaml")
            (run_dir / "run.yaml").write_text(yaml.safe_dump({"algo": algo, "command": sys.argv}))
        except OSError as error:
            raise _unwritable(cfg, run_dir, error) from error
        yield run_dir


def _unwritable(cfg: config.RunConfig, run_dir: Path, error: OSError) -> UsageError:
    return UsageError(
        f"--out {cfg.out!r}: cannot create the run directory {str(run_dir)!r} "
        f"({error.strerror or error})"
    )


def load_run(run_dir: Path) -> tuple[str, Algorithm, Any]:
    """The algorithm name, its registry entry and the saved config of a run directory."""
    if not (run_dir / "run.yaml").exists():
        raise UsageError(f"{str(run_dir)!r} is not a run directory (no run.yaml)")
    algo = (yaml.safe_load((run_dir / "run.yaml").read_text()) or {}).get("algo")
    if algo not in ALGORITHMS:
        raise UsageError(f"{str(run_dir / 'run.yaml')!r}: unknown algo {algo!r}")
    spec = ALGORITHMS[algo]
    try:
        cfg = config.load_yaml(spec.config, run_dir / "config.yaml")
    except (ValueError, OSError, yaml.YAMLError) as error:
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
