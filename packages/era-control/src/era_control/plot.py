"""Learning curves: mean ± std over seeds of one metric, one line per run, saved as PNG."""

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from era_control.config import read_yaml
from era_control.logging import METRICS_FILE, read_metrics

__all__ = ["curve", "plot_runs", "run_label"]


def curve(
    run_dir: str | Path, key: str = "eval/return"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, mean, std)`` of ``key`` over the seeds of a run, at steps every seed logged.

    Raises:
        ValueError: The run has no rows for ``key``.
    """
    by_step: dict[int, dict[int, float]] = defaultdict(dict)
    for step, seed, k, value in read_metrics(Path(run_dir) / METRICS_FILE):
        if k == key:
            by_step[step][seed] = value
    if not by_step:
        raise ValueError(f"run {str(run_dir)!r} has no metric {key!r}")
    num_seeds = max(len(v) for v in by_step.values())
    steps = np.array(sorted(s for s, v in by_step.items() if len(v) == num_seeds))
    values = np.array([list(by_step[s].values()) for s in steps])
    return steps, values.mean(1), values.std(1)


def run_label(run_dir: str | Path) -> str:
    """``"<algo> <env>"`` from the run's config, or the directory name."""
    config_path = Path(run_dir) / "config.yaml"
    if not config_path.exists():
        return Path(run_dir).name
    config = read_yaml(config_path)
    run_path = Path(run_dir) / "run.yaml"  # the algorithm is recorded there, not in the config
    algo = read_yaml(run_path)["algo"] if run_path.exists() else "run"
    era = config.get("era")
    name = f"{algo.upper()}-ERA" if era else algo.upper()
    return f"{name} ({config.get('seeds', 1)} seeds)"


def plot_runs(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    key: str = "eval/return",
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Plot ``key`` of each run (mean line, ±std band) into the PNG ``out``; returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    labels = list(labels) if labels is not None else [run_label(r) for r in run_dirs]
    if len(labels) != len(run_dirs):
        raise ValueError(f"labels has {len(labels)} entries for {len(run_dirs)} runs")
    fig, ax = plt.subplots(figsize=(6, 4))
    for run_dir, label in zip(run_dirs, labels, strict=True):
        steps, mean, std = curve(run_dir, key)
        ax.plot(steps, mean, label=label)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(key)
    ax.set_title(title or key)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
