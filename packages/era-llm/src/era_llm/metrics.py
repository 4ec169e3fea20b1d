"""Metric logging: one CSV row per step plus TensorBoard scalars, slash-namespaced keys."""

import csv
from pathlib import Path
from typing import Any

__all__ = ["MetricLogger", "read_metrics"]


def read_metrics(path: Path) -> list[dict[str, float]]:
    """Rows of a metrics CSV as floats (empty cells are skipped)."""
    with open(path, newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


class MetricLogger:
    """Writes ``<run>/metrics.csv`` and TensorBoard events under ``<run>/tb``.

    On resume, rows after ``resume_step`` (written after the checkpoint, then lost) are
    dropped so the CSV matches an uninterrupted run.

    Args:
        run_dir: Run directory.
        enabled: False on non-zero ranks: every call is a no-op.
        resume_step: Last step kept from an earlier run; 0 starts fresh.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, resume_step: int = 0) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.csv"
        self.rows: list[dict[str, float]] = []
        self.writer: Any = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step > 0 and self.path.exists():
            self.rows = [row for row in read_metrics(self.path) if row["step"] <= resume_step]
        self._rewrite()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(
            str(run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None
        )

    def _columns(self) -> list[str]:
        columns = {key for row in self.rows for key in row} - {"step"}
        return ["step", *sorted(columns)]

    def _rewrite(self) -> None:
        with open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self._columns())
            writer.writeheader()
            writer.writerows(self.rows)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record one step's metrics."""
        if not self.enabled:
            return
        row = {"step": float(step), **metrics}
        columns = self._columns()
        self.rows.append(row)
        if set(row) <= set(columns):
            with open(self.path, "a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=columns).writerow(row)
        else:
            self._rewrite()
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush TensorBoard."""
        if self.writer is not None:
            self.writer.close()
