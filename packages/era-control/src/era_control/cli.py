"""``era-control``: ``train <algo>``, ``eval``, ``plot`` and ``demo``.

Algorithms register in :data:`ALGORITHMS` (config class, presets, trainer, policy loader);
``train <algo>`` flags are generated from the config dataclass.
"""

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from era_control import checkpoint, config
from era_control.plot import plot_runs
from era_control.runs import ALGORITHMS, check_device, evaluate_run, load_run, start_run
from era_core.cli import (
    ArgumentParser,
    UsageError,
    debug_requested,
    hold_run_dir,
    report_usage_errors,
)

__all__ = ["build_parser", "main"]


@contextlib.contextmanager
def _user_input() -> Iterator[None]:
    """A ValueError raised while checking the user's input is a :class:`UsageError`."""
    try:
        yield
    except ValueError as error:
        raise UsageError(str(error)) from error


def _train(args: argparse.Namespace) -> int:
    spec = ALGORITHMS[args.algo]
    if args.resume is None:
        with _user_input():
            cfg = config.resolve(spec.config, args, spec.presets)
        with start_run(args.algo, cfg) as run:
            print(f"run directory: {run.dir}")
            return spec.train(run.config, run.dir, False, run.checkpointed)
    given = sorted(f.name for f in dataclasses.fields(spec.config) if hasattr(args, f.name))
    steps = getattr(args, "steps", None)
    if steps is not None:
        given.remove("steps")
    if given or args.config is not None or getattr(args, "preset", None) is not None:
        raise UsageError(
            "--resume continues the saved config (only --steps may extend it); "
            f"drop {given or ['--config/--preset']}"
        )
    run_dir = Path(args.resume)
    # load_run only reads: a folder that is not a run gets no lock file.
    algo, _, cfg = load_run(run_dir)
    if algo != args.algo:
        raise UsageError(
            f"{str(run_dir)!r} is a {algo} run: resume it with `train {algo} --resume`"
        )
    check_device(cfg.device)  # before _extend writes config.yaml
    with hold_run_dir(run_dir):
        state = checkpoint.load(run_dir / "checkpoint.pt")
        # `steps` is the one field a resume may change (an extension killed before its first
        # checkpoint leaves config.yaml ahead of the checkpoint).
        saved = {**state["config"], "steps": cfg.steps} if spec.extendable else state["config"]
        edited = sorted(k for k, v in config.to_dict(cfg).items() if saved.get(k) != v)
        if edited:
            raise UsageError(
                f"{str(run_dir / 'config.yaml')!r} was edited since the checkpoint ({edited}); "
                "restore it, or start a new run with --config"
            )
        if steps is not None and steps != cfg.steps:
            cfg = _extend(run_dir, algo, cfg, steps, int(state["step"]))
        return spec.train(cfg, run_dir, True, None)


def _extend(
    run_dir: Path, algo: str, cfg: config.RunConfig, steps: int, done: int
) -> config.RunConfig:
    """``cfg`` with the budget ``steps``, also written to the run's ``config.yaml``."""
    if not ALGORITHMS[algo].extendable:
        raise UsageError(
            f"--steps cannot change on --resume of a {algo} run: its schedule spans the whole "
            "budget; start a new run"
        )
    if steps < done:
        raise UsageError(f"--steps must be at least the {done} steps already done, got {steps}")
    with _user_input():
        cfg = dataclasses.replace(cfg, steps=steps)
    config.save_yaml(cfg, run_dir / "config.yaml")
    print(f"extending {run_dir} to {steps} steps")
    return cfg


def _eval(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise UsageError(f"--episodes must be at least 1, got {args.episodes}")
    check_device(args.device)
    _, _, cfg = load_run(Path(args.run))
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
    from era_control import demo  # heavy plotting imports only when asked for

    # The demo's SACConfig refuses fewer steps than a batch too, but with a traceback.
    for flag, least in (("steps", demo.BATCH_SIZE), ("seeds", 1)):
        if getattr(args, flag) < least:
            raise UsageError(f"--{flag} must be at least {least}, got {getattr(args, flag)}")
    return demo.run(Path(args.out), args.env, args.steps, args.seeds)


def _add_debug(parser: argparse.ArgumentParser) -> None:
    # Read from argv by debug_requested (before and after the command alike), not from args.
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks of errors (also ERA_DEBUG=1)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The full ``era-control`` argument parser."""
    parser = ArgumentParser(
        prog="era-control",
        description="ERA for continuous control (SAC-ERA vs SAC, PPO-ERA vs PPO, TD-MPC2-ERA vs TD-MPC2).",
    )
    _add_debug(parser)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train an agent (several seeds in one process)")
    algos = train.add_subparsers(dest="algo", required=True)
    for name, spec in ALGORITHMS.items():
        # The config's docstring is reStructuredText; --help shows its ``code`` as `code`.
        summary = (spec.config.__doc__ or "").strip().splitlines()[0].replace("``", "`")
        sub = algos.add_parser(name, help=summary,
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
        sub.add_argument(
            "--resume",
            metavar="RUN_DIR",
            help="continue a run from its checkpoint (no other flags but --steps, to extend a "
            "SAC run: the result equals a fresh run of that many steps)",
        )
        config.add_arguments(sub, spec.config, spec.presets)
        _add_debug(sub)
        sub.set_defaults(func=_train)

    evaluate = commands.add_parser("eval", help="deterministic returns of a run's checkpoint")
    evaluate.add_argument("run", help="run directory")
    evaluate.add_argument("--episodes", type=int, default=10, help="episodes per seed")
    evaluate.add_argument("--device", default="cpu", help="torch device")
    _add_debug(evaluate)
    evaluate.set_defaults(func=_eval)

    plot = commands.add_parser(
        "plot", help="learning curves (mean ± std over seeds) of runs, as PNG"
    )
    plot.add_argument("runs", nargs="+", help="run directories")
    plot.add_argument("--key", default="eval/return", help="metric to plot")
    plot.add_argument("--out", default="curves.png", help="output PNG")
    plot.add_argument("--labels", nargs="+", help="one legend label per run")
    plot.add_argument("--title", help="plot title")
    _add_debug(plot)
    plot.set_defaults(func=_plot)

    demo = commands.add_parser("demo", help="short SAC-ERA vs SAC comparison that writes a plot")
    demo.add_argument("--out", default="runs/demo/era-control", help="output directory")
    demo.add_argument("--env", default="InvertedDoublePendulum-v5", help="gymnasium id")
    demo.add_argument("--steps", type=int, default=8_000, help="env steps per seed")
    demo.add_argument("--seeds", type=int, default=2, help="seeds per algorithm")
    _add_debug(demo)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``era-control``; returns the exit code (2 and one line for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    return report_usage_errors(
        lambda: args.func(args), debug=debug_requested(argv), program="era-control"
    )


if __name__ == "__main__":
    sys.exit(main())
