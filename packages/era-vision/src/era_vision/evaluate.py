"""``era-vision eval``: a trained run's checkpoint on a test split, with the full metric report."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from era_core.cli import SET_ASIDE_DIR, UsageError
from era_core.validation import check_range
from era_vision.calibration import evaluate_heads
from era_vision.config import load_config, load_yaml, user_input
from era_vision.data import (
    AugmentedDataset,
    build_transform,
    check_worker_handover,
    load_data,
    parse_data,
    split_holdout,
)
from era_vision.distributed import setup
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
        if (run / SET_ASIDE_DIR).exists():
            # Its files are then part old run, part new (era_core.cli.replacing_run).
            raise ValueError(
                f"run={self.run!r} is being replaced: {SET_ASIDE_DIR}/ holds the earlier run "
                "until the training that started over there checkpoints, or, if that training "
                "was killed, until the next era-vision train there restores it"
            )
        if not (run / "config.yaml").exists() or not (run / "checkpoint.pt").exists():
            raise ValueError(
                f"run={self.run!r} is not a run folder (needs config.yaml and checkpoint.pt)"
            )
        check_range("batch_size", self.batch_size, low=1)
        check_range("workers", self.workers, low=0)
        if self.out is None:
            self.out = str(run if self.data is None else run / f"eval-{parse_data(self.data)[0]}")


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate a run's checkpoint and write ``eval.json`` and ``eval_reliability.png``.

    Reports each head (``era`` for ERA runs, ``plain``) before and after temperature scaling;
    the temperatures are fitted on the run's own held-out training images (the same seeded
    split it was trained without), also when ``--data`` names another test set.

    Args:
        cfg: What to evaluate and where.

    Returns:
        The report: ``rows`` (head, calibrated, temperature, top1, top5, nll, ece,
        entropy_mean, entropy_min), ``temperatures``, ``holdout_size``, ``reliability`` bins.
    """
    run = Path(cfg.run)
    train_cfg = load_config(TrainConfig, run / "config.yaml")
    if "calibration_holdout" not in load_yaml(run / "config.yaml"):
        # Runs of era-vision 0.1 trained on every training image: none is held out to fit T on.
        train_cfg.calibration_holdout = 0.0
    with user_input(f"--device {cfg.device}"):
        ctx = setup(cfg.device)
    check_worker_handover(cfg.workers)
    with user_input(f"--data {train_cfg.data}"):
        train_data = load_data(train_cfg.data)
    with user_input(f"--data {cfg.data}"):
        data = load_data(cfg.data) if cfg.data else train_data
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
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:  # e.g. --data with another number of classes than the run's
        first = str(error).splitlines()[1:2] or [str(error)]
        raise UsageError(
            f"the checkpoint does not fit {train_cfg.model} on this data: {first[0].strip()} "
            f"(--data {cfg.data or train_cfg.data})"
        ) from error
    test_set = AugmentedDataset(data.test, build_transform("none", data, train=False))
    _, holdout = split_holdout(train_data.train, train_cfg.calibration_holdout, train_cfg.seed)
    if holdout is not None:
        holdout = AugmentedDataset(holdout, build_transform("none", train_data, train=False))
    args = (ctx, cfg.batch_size, cfg.workers)
    evaluation = evaluate_heads(model.to(ctx.device), test_set, holdout, *args)
    if not ctx.main:  # under torchrun every rank evaluates its shard; rank 0 writes
        return {"rows": evaluation.rows, "temperatures": evaluation.temperatures}
    return write_report(evaluation, Path(cfg.out))  # type: ignore[arg-type]
