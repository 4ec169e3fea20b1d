"""``era-llm train | eval | demo``: each subcommand's flags come from its config dataclass.

A failure the user can fix (a bad flag value, a missing or malformed file, an output dir that
holds another run or cannot be written, a corrupt checkpoint, CUDA asked for where there is
none) prints one line ``error: <what>`` and exits with code 2; ``--debug`` or ``ERA_DEBUG=1``
shows its traceback. Any other exception is a bug and keeps its traceback.
"""

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from era_core.cli import debug_requested, report_usage_errors
from era_llm.config import parse_config
from era_llm.errors import UsageError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["main"]

C = TypeVar("C", bound="DataclassInstance")


def _config(cls: type[C], argv: list[str], prog: str) -> C:
    """Parse and validate a config; a bad value is the user's to fix."""
    try:
        return parse_config(cls, argv, prog=prog)
    except ValueError as error:
        raise UsageError(str(error)) from error


def _train(argv: list[str]) -> None:
    from era_llm.trainer import TrainConfig, train

    print(train(_config(TrainConfig, argv, "era-llm train")))


def _eval(argv: list[str]) -> None:
    from era_llm.evaluation import EvalConfig, run_eval

    run_eval(_config(EvalConfig, argv, "era-llm eval"))


def _demo(argv: list[str]) -> None:
    import json

    from era_llm.demo import DemoConfig, run_demo

    cfg = _config(DemoConfig, argv, "era-llm demo")
    print(json.dumps(run_demo(cfg), indent=2))
    print(f"plot: {cfg.output_dir}/demo.png\nsummary: {cfg.output_dir}/summary.md")


COMMANDS: dict[str, tuple[Callable[[list[str]], Any], str]] = {
    "train": (_train, "GRPO / GRPO-ERA training (torchrun for several processes)"),
    "eval": (_eval, "avg@n and pass@k of a model on math datasets"),
    "demo": (
        _demo,
        "GRPO, entropy bonus and GRPO-ERA where exploration pays, tiny model, CPU, minutes",
    ),
}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``era-llm`` command."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        lines = [f"  {name:6} {text}" for name, (_, text) in COMMANDS.items()]
        print(
            "usage: era-llm {train,eval,demo} [--config FILE.yaml] [--flag value ...] [--debug]\n\n"
            + "\n".join(lines)
        )
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command, rest = COMMANDS[argv[0]][0], argv[1:]

    def run() -> int:
        command(rest)
        return 0

    code = report_usage_errors(run, debug=debug_requested(argv), program="era-llm")
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
