"""Run-folder I/O: CSV + TensorBoard metric logs, and reading checkpoints back."""

import csv
from pathlib import Path
from typing import Any

import torch

from era_core.cli import UsageError

__all__ = ["MetricLogger", "load_checkpoint"]


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint that training wrote (tensors and plain containers only).

    Raises:
        UsageError: If the file is missing, truncated or not a checkpoint of ours. Unpickling
            arbitrary objects (``weights_only=False``) is never the answer to a file we did not
            write.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise UsageError(
            f"{path} is not a readable era-vision checkpoint ({type(error).__name__}); "
            "move it away, or start over with --no-resume"
        ) from error
    if not isinstance(state, dict) or not {"model", "step", "config"} <= state.keys():
        raise UsageError(f"{path} is not an era-vision checkpoint (no model/step/config)")
    return state


class MetricLogger:
    """Appends slash-namespaced scalars to ``<run>/<group>.csv`` and TensorBoard (``<run>/tb``).

    Keys are grouped by their prefix (``train/loss`` goes to ``train.csv``); each CSV has a
    ``step`` column and one column per key, fixed by its first row. On resume, rows written
    after the checkpoint's step by the interrupted run are dropped, so the CSV has no duplicates.

    Args:
        run_dir: The run folder.
        resume_step: Step of the checkpoint being resumed (None: a fresh run, files are replaced).
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        for path in self.run_dir.glob("*.csv"):
            if resume_step is None:
                path.unlink()
            else:
                with open(path, newline="") as f:
                    rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
                    fields = list(rows[0]) if rows else None
                path.unlink()
                if fields:
                    self._write(path, rows, fields)
        self.tensorboard = SummaryWriter(self.run_dir / "tb", purge_step=resume_step)

    @staticmethod
    def _write(path: Path, rows: list[dict], fields: list[str]) -> None:
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            if new:
                writer.writeheader()
            writer.writerows(rows)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Write ``metrics`` (keys like ``eval/top1``) at ``step``."""
        groups: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            groups.setdefault(key.split("/")[0], {})[key] = value
            self.tensorboard.add_scalar(key, value, step)
        for group, values in groups.items():
            self._append(group, [{"step": step, **values}])

    def log_rows(self, group: str, step: int, rows: dict[str, dict[str, Any]]) -> None:
        """Write several rows at ``step`` to ``<group>.csv`` (e.g. one per head of an eval).

        Args:
            group: File stem and TensorBoard prefix, e.g. ``eval``.
            step: The optimizer step.
            rows: Row name -> row; the row's float values go to TensorBoard as
                ``<group>/<name>/<key>``, the whole row to the CSV.
        """
        for name, row in rows.items():
            for key, value in row.items():
                if isinstance(value, float):
                    self.tensorboard.add_scalar(f"{group}/{name}/{key}", value, step)
        self._append(group, [{"step": step, **row} for row in rows.values()])

    def _append(self, group: str, lines: list[dict[str, Any]]) -> None:
        # The columns are fixed by the file's header once it exists.
        path = self.run_dir / f"{group}.csv"
        fields = list(lines[0])
        if path.exists():
            with open(path, newline="") as f:
                fields = next(csv.reader(f))
        self._write(path, lines, fields)

    def close(self) -> None:
        """Flush and close TensorBoard."""
        self.tensorboard.close()
