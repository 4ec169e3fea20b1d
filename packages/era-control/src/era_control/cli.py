"""``era-control``: ``train <algo>``, ``eval``, ``plot`` and ``demo``.

Algorithms register in :data:`ALGORITHMS` (config class, presets, trainer, policy loader);
``train <algo>`` flags are generated from the config dataclass.
"""

import argparse
import contextlib
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from era_control import checkpoint, config, envs, ppo, sac
from era_control.plot import plot_runs

__all__ = ["ALGORITHMS", "Algorithm", "evaluate_run", "main", "start_run"]


@dataclass(frozen=True)
class Algorithm:
    """What the CLI needs to know about a trainer."""

    config: type[config.RunConfig]
    presets: dict[str, dict[str, Any]]
    train: Callable[[Any, Path, bool], int]
    evaluation_policy: Callable[[Any, dict[str, Any], Any], Callable[[np.ndarray], np.ndarray]]


ALGORITHMS: dict[str, Algorithm] = {
    "sac": Algorithm(sac.SACConfig, sac.PRESETS, sac.train, sac.evaluation_policy),
    "ppo": Algorithm(ppo.PPOConfig, ppo.PRESETS, ppo.train, ppo.evaluation_policy),
}


def start_run(algo: str, cfg: config.RunConfig) -> Path:
    """Create the run directory and write ``config.yaml`` (the resolved config) and ``run.yaml``."""
    name = cfg.run_name or "__".join([
        cfg.env.replace("/", "-"), f"{algo}-era" if getattr(cfg, "era", False) else algo,
        f"s{cfg.seed}-{cfg.seed + cfg.seeds - 1}", time.strftime("%Y%m%d-%H%M%S"),
    ])  # fmt: skip
    run_dir = Path(cfg.out) / name
    if (run_dir / "checkpoint.pt").exists():
        raise ValueError(
            f"run directory {str(run_dir)!r} exists: resume it with --resume or pick --run-name"
        )
    if (run_dir / "run.yaml").exists():  # killed before its first checkpoint: start it again
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save_yaml(cfg, run_dir / "config.yaml")
    (run_dir / "run.yaml").write_text(yaml.safe_dump({"algo": algo, "command": sys.argv}))
    return run_dir


def _load_run(run_dir: Path) -> tuple[str, Algorithm, Any]:
    if not (run_dir / "run.yaml").exists():
        raise ValueError(f"{str(run_dir)!r} is not a run directory (no run.yaml)")
    algo = yaml.safe_load((run_dir / "run.yaml").read_text())["algo"]
    spec = ALGORITHMS[algo]
    return algo, spec, config.load_yaml(spec.config, run_dir / "config.yaml")


def evaluate_run(run_dir: str | Path, episodes: int = 10, device: str = "cpu") -> np.ndarray:
    """Deterministic mean return per seed of a run's latest checkpoint."""
    import torch

    run_dir = Path(run_dir)
    _, spec, cfg = _load_run(run_dir)
    state = checkpoint.load(run_dir / "checkpoint.pt", map_location=device)
    policy = spec.evaluation_policy(cfg, state, torch.device(device))
    eval_envs = envs.make_vector_env(cfg.env, cfg.seeds)
    # Seeds disjoint from the ones the trainer evaluates on.
    returns = envs.evaluate(policy, eval_envs, [s + 200_000 for s in cfg.seed_list()], episodes)
    eval_envs.close()
    return returns


class _BadInput(Exception):
    """A ValueError raised while reading the user's input: reported without a traceback."""


@contextlib.contextmanager
def _user_input() -> Iterator[None]:
    try:
        yield
    except ValueError as error:
        raise _BadInput(str(error)) from error


def _train(args: argparse.Namespace) -> int:
    spec = ALGORITHMS[args.algo]
    with _user_input():
        if args.resume is None:
            cfg = config.resolve(spec.config, args, spec.presets)
            run_dir = start_run(args.algo, cfg)
            print(f"run directory: {run_dir}")
        else:
            given = sorted(f.name for f in dataclasses.fields(spec.config) if hasattr(args, f.name))
            if given or args.config is not None or getattr(args, "preset", None) is not None:
                raise ValueError(
                    f"--resume continues the saved config; drop {given or ['--config/--preset']}"
                )
            run_dir = Path(args.resume)
            _, _, cfg = _load_run(run_dir)
            if not (run_dir / "checkpoint.pt").exists():
                raise ValueError(f"{str(run_dir)!r} has no checkpoint.pt to resume from")
    return spec.train(cfg, run_dir, args.resume is not None)


def _eval(args: argparse.Namespace) -> int:
    with _user_input():
        _, _, cfg = _load_run(Path(args.run))
    returns = evaluate_run(args.run, args.episodes, args.device)
    result = {"env": cfg.env, "episodes": args.episodes, "seeds": cfg.seed_list(), "returns": returns.tolist(),
              "mean": float(returns.mean()), "std": float(returns.std())}  # fmt: skip
    (Path(args.run) / "eval.json").write_text(json.dumps(result, indent=2))
    for seed, value in zip(cfg.seed_list(), returns, strict=True):
        print(f"seed {seed}: {value:.1f}")
    print(f"{cfg.env}: {result['mean']:.1f} ± {result['std']:.1f} over {len(returns)} seeds")
    return 0


def _plot(args: argparse.Namespace) -> int:
    with _user_input():
        out = plot_runs(args.runs, args.out, args.key, args.labels, args.title)
    print(f"wrote {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from era_control import demo

    return demo.run(Path(args.out), args.env, args.steps, args.seeds)


def build_parser() -> argparse.ArgumentParser:
    """The full ``era-control`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="era-control",
        description="ERA for continuous control (SAC-ERA vs SAC, PPO-ERA vs PPO).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train an agent (several seeds in one process)")
    algos = train.add_subparsers(dest="algo", required=True)
    for name, spec in ALGORITHMS.items():
        sub = algos.add_parser(name, help=(spec.config.__doc__ or "").strip().splitlines()[0],
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
        sub.add_argument(
            "--resume",
            metavar="RUN_DIR",
            help="continue a run from its checkpoint (no other flags)",
        )
        config.add_arguments(sub, spec.config, spec.presets)
        sub.set_defaults(func=_train)

    evaluate = commands.add_parser("eval", help="deterministic returns of a run's checkpoint")
    evaluate.add_argument("run", help="run directory")
    evaluate.add_argument("--episodes", type=int, default=10, help="episodes per seed")
    evaluate.add_argument("--device", default="cpu", help="torch device")
    evaluate.set_defaults(func=_eval)

    plot = commands.add_parser(
        "plot", help="learning curves (mean ± std over seeds) of runs, as PNG"
    )
    plot.add_argument("runs", nargs="+", help="run directories")
    plot.add_argument("--key", default="eval/return", help="metric to plot")
    plot.add_argument("--out", default="curves.png", help="output PNG")
    plot.add_argument("--labels", nargs="+", help="one legend label per run")
    plot.add_argument("--title", help="plot title")
    plot.set_defaults(func=_plot)

    demo = commands.add_parser("demo", help="short SAC-ERA vs SAC comparison that writes a plot")
    demo.add_argument("--out", default="runs/demo/era-control", help="output directory")
    demo.add_argument("--env", default="InvertedDoublePendulum-v5", help="gymnasium id")
    demo.add_argument("--steps", type=int, default=15_000, help="env steps per seed")
    demo.add_argument("--seeds", type=int, default=2, help="seeds per algorithm")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``era-control``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except _BadInput as error:
        parser.exit(2, f"era-control: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
