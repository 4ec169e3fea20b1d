"""Run logs: a long-format CSV (``step,seed,key,value``), TensorBoard per seed, a progress bar.

Keys are slash-namespaced and stable (``charts/episodic_return``, ``loss/critic``,
``entropy/policy``, ``era/delta``, ...). Values are per seed: a scalar applies to every
seed, an array has one entry per seed.
"""

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["METRICS_FILE", "Logger", "progress_bar", "read_metrics"]

METRICS_FILE = "metrics.csv"
_HEADER = ["step", "seed", "key", "value"]


class Logger:
    """Append per-seed metrics to ``run_dir/metrics.csv`` and ``run_dir/tb/seed_<seed>``.

    Args:
        run_dir: The run's directory.
        seeds: The seeds of the ensemble, in member order.
        resume_step: When resuming, rows logged after this step (by a run that died before
            its next checkpoint) are dropped, so the log matches the restored state.
        tensorboard: Also write TensorBoard event files.
    """

    def __init__(
        self,
        run_dir: str | Path,
        seeds: Sequence[int],
        resume_step: int | None = None,
        tensorboard: bool = True,
    ) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.seeds = list(seeds)
        if resume_step is not None and self.path.exists():
            rows = [r for r in read_metrics(self.path) if r[0] <= resume_step]
            with self.path.open("w", newline="") as file:
                csv.writer(file).writerows([_HEADER, *rows])
        new = not self.path.exists()
        self._file = self.path.open("a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(_HEADER)
        self._writers = []
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # slow import, only when used

            self._writers = [
                SummaryWriter(str(Path(run_dir) / "tb" / f"seed_{s}")) for s in self.seeds
            ]

    def log(
        self,
        step: int,
        metrics: Mapping[str, float | np.ndarray | torch.Tensor],
        members: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        """Record ``metrics`` at ``step`` for ``members`` (ensemble indices; default all)."""
        members = range(len(self.seeds)) if members is None else list(members)
        for key, value in metrics.items():
            values = np.broadcast_to(
                np.asarray(torch.as_tensor(value).detach().cpu(), dtype=float), (len(members),)
            )
            for member, v in zip(members, values, strict=True):
                self._csv.writerow([step, self.seeds[member], key, f"{v:.6g}"])
                if self._writers:
                    self._writers[member].add_scalar(key, v, step)
        self._file.flush()

    def close(self) -> None:
        """Flush and close the files."""
        self._file.close()
        for writer in self._writers:
            writer.close()


def read_metrics(path: str | Path) -> list[tuple[int, int, str, float]]:
    """Rows ``(step, seed, key, value)`` of a ``metrics.csv``.

    A half-written last line (a run killed mid-write) is skipped; a bad line elsewhere raises.
    """
    with Path(path).open(newline="") as file:
        lines = list(csv.reader(file))[1:]
    rows = []
    for number, line in enumerate(lines):
        try:
            s, seed, k, v = line
            rows.append((int(s), int(seed), k, float(v)))
        except ValueError:
            if number < len(lines) - 1:
                raise ValueError(f"{path}: malformed line {number + 2}: {line}") from None
    return rows


def progress_bar(total: int, initial: int = 0, desc: str = "") -> tqdm:
    """A progress bar over env steps, refreshed at most once a second."""
    return tqdm(
        total=total, initial=initial, desc=desc, unit="step", mininterval=1.0, dynamic_ncols=True
    )
