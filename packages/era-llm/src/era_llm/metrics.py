"""Metric logging: one CSV row and TensorBoard scalars per step, and completions when asked.

Keys are slash-namespaced; the completions go to ``completions.jsonl`` and TensorBoard's text tab.
"""

import csv
import json
from pathlib import Path
from typing import Any

__all__ = ["COMPLETIONS_FILE", "MetricLogger", "read_metrics"]

COMPLETIONS_FILE = "completions.jsonl"
"""One JSON object per sampled completion of a logged step (``log_completions_every``)."""


def read_metrics(path: Path) -> list[dict[str, float]]:
    """Rows of a metrics CSV as floats (empty cells are skipped)."""
    with open(path, newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


class MetricLogger:
    """Writes ``<run>/metrics.csv`` and TensorBoard events under ``<run>/tb``.

    On resume, rows after ``resume_step`` (written after the checkpoint, then lost) are
    dropped so the CSV, and ``completions.jsonl``, match an uninterrupted run.

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
        self.completions = run_dir / COMPLETIONS_FILE
        if self.completions.exists():
            kept = [
                line
                for line in self.completions.read_text().splitlines(keepends=True)
                if line.endswith("\n") and json.loads(line)["step"] <= resume_step
            ]
            self.completions.write_text("".join(kept))
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

    def log_completions(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Append one step's completions to ``completions.jsonl`` and TensorBoard's text tab."""
        if not self.enabled:
            return
        with open(self.completions, "a") as handle:
            handle.writelines(json.dumps({"step": step, **row}) + "\n" for row in rows)
        self.writer.add_text("completions", _markdown_table(rows), step)

    def close(self) -> None:
        """Flush TensorBoard."""
        if self.writer is not None:
            self.writer.close()


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows as a markdown table (TensorBoard's text tab renders it); one line per row."""
    if not rows:
        return "(no completions)"

    def cell(value: Any) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
