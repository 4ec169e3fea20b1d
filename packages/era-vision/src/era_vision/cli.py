"""The ``era-vision`` command: train, eval, plot, demo (also ``python -m era_vision``).

Errors the user can fix (bad flags or YAML, missing or corrupt data and checkpoints, an
unwritable ``--out``, a missing device) print one line ``error: ...`` and exit with code 2;
``--debug`` or ``ERA_DEBUG=1`` shows their traceback (``era_core.cli``).
"""

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from era_core.cli import ArgumentParser, debug_requested, report_usage_errors
from era_vision.config import add_arguments, config_from_args

__all__ = ["PlotConfig", "build_parser", "main"]


@dataclass
class PlotConfig:
    """Arguments of ``era-vision plot``."""

    runs: list[str] = field(
        default_factory=list, metadata={"help": "run folders to compare", "positional": True}
    )
    out: str = field(default="runs/plots", metadata={"help": "output folder"})


def _train(cfg: Any) -> int:
    from era_vision.train import train

    result = train(cfg)
    if result["metrics"] is not None:
        print(json.dumps(result["metrics"], indent=2))
    # 128 + signal number, as a shell reports a process killed by that signal.
    return 128 + result["signal"] if result["status"] == "interrupted" else 0


def _eval(cfg: Any) -> int:
    from era_vision.evaluate import run_eval

    print(json.dumps(run_eval(cfg)["rows"], indent=2))
    return 0


def _plot(cfg: PlotConfig) -> int:
    from era_vision.plots import plot_runs

    for path in plot_runs([Path(r) for r in cfg.runs], Path(cfg.out)):
        print(path)
    return 0


def _demo(cfg: Any) -> int:
    from era_vision.demo import run_demo

    run_demo(cfg)
    return 0


def _commands() -> dict[str, tuple[type, Callable[[Any], int], str]]:
    from era_vision.demo import DemoConfig
    from era_vision.evaluate import EvalConfig
    from era_vision.train import TrainConfig

    return {
        "train": (TrainConfig, _train, "train a classifier with a regulariser (ce, ..., era)"),
        "eval": (
            EvalConfig,
            _eval,
            "top-1/top-5/NLL/ECE/entropy of a run's checkpoint, per head, before/after T",
        ),
        "plot": (PlotConfig, _plot, "learning curves and reliability diagrams of runs"),
        "demo": (DemoConfig, _demo, "ce vs label smoothing vs ERA on the built-in digits"),
    }


def build_parser() -> ArgumentParser:
    """The ``era-vision`` command line: one subcommand per config class, a flag per field."""
    # The module docstring is reStructuredText; --help shows its ``code`` as `code`.
    description = (__doc__ or "").replace("``", "`")
    parser = ArgumentParser(prog="era-vision", description=description)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (cls, _, help_text) in _commands().items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(subparser, cls)
        subparser.add_argument(
            "--debug", action="store_true", help="show the traceback of input errors"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    cls, run, _ = _commands()[vars(args).pop("command")]
    vars(args).pop("debug")

    def body() -> int:
        return run(config_from_args(cls, args))

    return report_usage_errors(body, debug=debug_requested(argv), program="era-vision")


if __name__ == "__main__":
    sys.exit(main())
