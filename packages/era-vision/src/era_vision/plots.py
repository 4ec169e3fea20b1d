"""Figures (learning curves, reliability diagrams) and the JSON + PNG eval report of a run."""

import csv
import json
import math
from pathlib import Path

from matplotlib.figure import Figure

from era_vision.metrics import ClassificationMetrics

__all__ = ["markdown_table", "plot_runs", "reliability_diagram", "write_report"]

CURVES = (
    ("train", "train/loss"),
    ("train", "train/entropy"),
    ("eval", "eval/top1"),
    ("eval", "eval/nll"),
    ("eval", "eval/ece"),
    ("eval", "eval/entropy_min"),
)


def reliability_diagram(runs: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Accuracy against confidence per bin, one line per run, with the diagonal of calibration.

    Args:
        runs: Run label -> ``ClassificationMetrics.reliability()``.
        path: The PNG to write.
    """
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="calibrated")
    for label, bins in runs.items():
        points = [
            (c, a)
            for c, a in zip(bins["confidence"], bins["accuracy"], strict=True)
            if not math.isnan(c)
        ]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="reliability")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)


def write_report(metrics: ClassificationMetrics, out_dir: Path, name: str = "eval") -> dict:
    """Write ``<name>.json`` (metrics and reliability bins) and ``<name>_reliability.png``.

    Args:
        metrics: Accumulated metrics.
        out_dir: Folder to write into (created if missing).
        name: File name stem.

    Returns:
        The JSON content.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"metrics": metrics.compute(), "reliability": metrics.reliability()}
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2))
    reliability_diagram({out_dir.name: report["reliability"]}, out_dir / f"{name}_reliability.png")
    return report


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_runs(runs: list[Path], out: Path) -> list[Path]:
    """Overlay the learning curves and final reliability diagrams of several runs.

    Args:
        runs: Run folders (with ``train.csv``, ``eval.csv`` and ``eval.json``).
        out: Folder for ``curves.png`` and ``reliability.png``.

    Returns:
        The files written.

    Raises:
        ValueError: If a run folder has no logs.
    """
    out.mkdir(parents=True, exist_ok=True)
    logs = {}
    for run in map(Path, runs):
        logs[run.name] = {group: _read_csv(run / f"{group}.csv") for group in ("train", "eval")}
        if not any(logs[run.name].values()):
            raise ValueError(f"{run} has no train.csv or eval.csv: is it a run folder?")
    fig = Figure(figsize=(12, 6.5), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    for ax, (group, key) in zip(axes, CURVES, strict=True):
        for label, log in logs.items():
            rows = [r for r in log[group] if r.get(key)]
            ax.plot([int(r["step"]) for r in rows], [float(r[key]) for r in rows], label=label)
        ax.set(title=key, xlabel="step")
    axes[0].legend(fontsize="small")
    written = [out / "curves.png"]
    fig.savefig(written[0], dpi=110)
    reports = {
        Path(run).name: json.loads((Path(run) / "eval.json").read_text())["reliability"]
        for run in runs
        if (Path(run) / "eval.json").exists()
    }
    if reports:
        written.append(out / "reliability.png")
        reliability_diagram(reports, written[-1])
    return written


def markdown_table(rows: list[dict], columns: list[str], digits: int = 4) -> str:
    """A Markdown table of ``rows`` (floats rounded to ``digits`` places)."""

    def cell(value: object) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
