"""``era-vision eval``: a trained run's checkpoint on a test split, with the full metric report."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from era_core.cli import UsageError
from era_vision.config import load_config, user_input
from era_vision.data import AugmentedDataset, build_transform, load_data, parse_data
from era_vision.distributed import setup
from era_vision.metrics import evaluate
from era_vision.plots import write_report
from era_vision.runlog import load_checkpoint
from era_vision.train import TrainConfig, build_model

__all__ = ["EvalConfig", "run_eval"]


@dataclass
class EvalConfig:
    """Arguments of ``era-vision eval``."""

    run: str = field(
        default="", metadata={"help": "run folder written by train", "positional": True}
    )
    data: str | None = field(
        default=None, metadata={"help": "dataset NAME[:PATH] to test on (default: the run's)"}
    )
    ema: bool = field(default=False, metadata={"help": "evaluate the EMA weights"})
    batch_size: int = field(default=256, metadata={"help": "images per forward pass"})
    workers: int = field(default=0, metadata={"help": "DataLoader workers"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"help": "device"})
    out: str | None = field(
        default=None,
        metadata={
            "help": "report folder (default: the run folder, or <run>/eval-<data> for other data)"
        },
    )

    def __post_init__(self) -> None:
        run = Path(self.run)
        if not (run / "config.yaml").exists() or not (run / "checkpoint.pt").exists():
            raise ValueError(
                f"run={self.run!r} is not a run folder (needs config.yaml and checkpoint.pt)"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if self.out is None:
            self.out = str(run if self.data is None else run / f"eval-{parse_data(self.data)[0]}")


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate a run's checkpoint and write ``eval.json`` and ``eval_reliability.png``.

    Args:
        cfg: What to evaluate and where.

    Returns:
        The report: ``metrics`` (top1, top5, nll, ece, entropy_mean, entropy_min) and
        ``reliability`` bins.
    """
    run = Path(cfg.run)
    train_cfg = load_config(TrainConfig, run / "config.yaml")
    with user_input(f"--device {cfg.device}"):
        ctx = setup(cfg.device)
    with user_input(f"--data {cfg.data or train_cfg.data}"):
        data = load_data(cfg.data or train_cfg.data)
    with user_input(f"{run}/config.yaml"):
        model = build_model(train_cfg, data)
    state = load_checkpoint(run / "checkpoint.pt")
    if cfg.ema:
        if state["ema"] is None:
            raise UsageError(f"{run} was trained without EMA (ema_decay=0) (--ema)")
        # AveragedModel keeps the model as `module` next to an `n_averaged` counter.
        weights = {
            k.removeprefix("module."): v for k, v in state["ema"].items() if k != "n_averaged"
        }
    else:
        weights = state["model"]
    model.load_state_dict(weights)
    test_set = AugmentedDataset(data.test, build_transform("none", data, train=False))
    metrics = evaluate(model.to(ctx.device), test_set, ctx, cfg.batch_size, cfg.workers)
    if not ctx.main:  # under torchrun every rank evaluates its shard; rank 0 writes
        return {"metrics": metrics.compute(), "reliability": metrics.reliability()}
    return write_report(metrics, Path(cfg.out))  # type: ignore[arg-type]
