"""``era-llm train | eval | demo``: each subcommand's flags come from its config dataclass."""

import sys
from collections.abc import Callable
from typing import Any

from era_llm.config import parse_config

__all__ = ["main"]


def _train(argv: list[str]) -> None:
    from era_llm.trainer import TrainConfig, train

    print(train(parse_config(TrainConfig, argv, prog="era-llm train")))


def _eval(argv: list[str]) -> None:
    from era_llm.evaluation import EvalConfig, run_eval

    run_eval(parse_config(EvalConfig, argv, prog="era-llm eval"))


def _demo(argv: list[str]) -> None:
    import json

    from era_llm.demo import DemoConfig, run_demo

    cfg = parse_config(DemoConfig, argv, prog="era-llm demo")
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
            "usage: era-llm {train,eval,demo} [--config FILE.yaml] [--flag value ...]\n\n"
            + "\n".join(lines)
        )
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    try:
        COMMANDS[argv[0]][0](argv[1:])
    except ValueError as error:
        raise SystemExit(f"era-llm {argv[0]}: error: {error}") from error


if __name__ == "__main__":
    main()
