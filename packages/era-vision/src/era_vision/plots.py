"""Figures (learning curves, reliability diagrams) and the JSON + PNG eval report of a run."""

import csv
import json
import math
from pathlib import Path

from matplotlib.figure import Figure

from era_core.cli import UsageError
from era_vision.calibration import Evaluation

__all__ = ["markdown_table", "plot_runs", "reliability_diagram", "write_report"]

# (file, column); eval.csv has one row per head and calibration, plotted per head, uncalibrated.
CURVES = (
    ("train", "train/loss"),
    ("train", "train/entropy"),
    ("eval", "top1"),
    ("eval", "nll"),
    ("eval", "ece"),
    ("eval", "entropy_min"),
)


def reliability_diagram(runs: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Accuracy against confidence per bin, one line per run or head, and the diagonal.

    Args:
        runs: Line label -> ``ClassificationMetrics.reliability()``. A label ending in
            ``_calibrated`` (temperature-scaled) is drawn dashed in the colour of the same
            label without the suffix.
        path: The PNG to write.
    """
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="perfectly calibrated")
    colours: dict[str, str] = {}
    for label, bins in runs.items():
        points = [
            (c, a)
            for c, a in zip(bins["confidence"], bins["accuracy"], strict=True)
            if not math.isnan(c)
        ]
        base = label.removesuffix("_calibrated")
        colour = colours.setdefault(base, f"C{len(colours)}")
        scaled = base != label
        name = f"{base}, T-scaled" if scaled else base
        if points:
            x, y = zip(*points, strict=True)
            ax.plot(x, y, "--" if scaled else "-", color=colour, marker="o", label=name)
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="reliability")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)


def write_report(evaluation: Evaluation, out_dir: Path, name: str = "eval") -> dict:
    """Write ``<name>.json`` and ``<name>_reliability.png`` (every head, before and after T).

    The JSON holds ``rows`` (one per head and calibration), ``temperatures``,
    ``holdout_size`` and the ``reliability`` bins of each row.

    Args:
        evaluation: From ``era_vision.calibration.evaluate_heads``.
        out_dir: Folder to write into (created if missing).
        name: File name stem.

    Returns:
        The JSON content.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "rows": evaluation.rows,
        "temperatures": evaluation.temperatures,
        "holdout_size": evaluation.holdout_size,
        "reliability": evaluation.reliability,
    }
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2))
    reliability_diagram(evaluation.reliability, out_dir / f"{name}_reliability.png")
    return report


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_runs(runs: list[Path], out: Path) -> list[Path]:
    """Overlay the learning curves and final reliability diagrams of several runs.

    Args:
        runs: Run folders (with ``train.csv``, ``eval.csv`` and ``eval.json``); the eval
            curves and reliability lines are drawn per head (era, plain), uncalibrated.
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
            raise UsageError(f"{run} has no train.csv or eval.csv: is it a run folder?")
    fig = Figure(figsize=(12, 6.5), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    for ax, (group, key) in zip(axes, CURVES, strict=True):
        for label, log in logs.items():
            rows = [r for r in log[group] if r.get(key) and r.get("calibrated") != "True"]
            for head in dict.fromkeys(r.get("head") for r in rows):
                mine = [r for r in rows if r.get("head") == head]
                name = label if head is None else f"{label} {head}"
                ax.plot([int(r["step"]) for r in mine], [float(r[key]) for r in mine], label=name)
        ax.set(title=f"{group}: {key}", xlabel="step")
    axes[0].legend(fontsize="small")
    written = [out / "curves.png"]
    fig.savefig(written[0], dpi=110)
    # Uncalibrated heads only: each run's own eval_reliability.png also has the calibrated ones.
    reports = {
        f"{Path(run).name} {head}": bins
        for run in runs
        if (Path(run) / "eval.json").exists()
        for head, bins in json.loads((Path(run) / "eval.json").read_text())["reliability"].items()
        if not head.endswith("calibrated")
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
