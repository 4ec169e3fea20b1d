"""What the returns benchmarks share: start, resume or skip a run; run a few at a time; read curves.

A run directory is ``<out>/runs/<task>__<arm>__<steps>``. Re-running a benchmark resumes
unfinished runs from their checkpoints, restarts runs killed before their first checkpoint
and skips finished ones, so a long table can be built over several sessions. A run of an
extendable algorithm (SAC) that has not started continues a copy of the longest finished
shorter run of its (task, arm) instead (``train sac --resume --steps``, which equals a fresh
run of the longer budget).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from era_control import checkpoint
from era_control.logging import METRICS_FILE, read_metrics
from era_control.runs import ALGORITHMS

REPO = Path(__file__).resolve().parents[3]
# Student-t 0.975 quantiles by degrees of freedom (the normal's 1.96 beyond the table).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def default_runs_root() -> Path:
    """Where long benchmarks keep run folders unless told: ``$ERA_BENCH_RUNS`` or a cache folder.

    Outside any work tree, so that a later invocation (another clone, another session on the
    same machine) finds and resumes them.
    """
    return Path(os.environ.get("ERA_BENCH_RUNS", "~/.cache/era-control/benchmarks")).expanduser()


def run_dir(out: Path, task: str, arm: str, steps: int) -> Path:
    """Where one (task, arm) run lives; ``arm`` is slugged for the file system."""
    slug = re.sub(r"[^a-z0-9.]+", "-", arm.lower()).strip("-")  # "PPO-ERA (state)": ppo-era-state
    return out / "runs" / f"{task.replace('/', '-')}__{slug}__{steps}"


def steps_done(path: Path) -> int:
    """Env steps in the run's checkpoint (0 without one)."""
    ckpt = path / "checkpoint.pt"
    return int(checkpoint.load(ckpt)["step"]) if ckpt.exists() else 0


def shorter_finished_run(path: Path) -> Path | None:
    """The finished run of the same (task, arm) with the most steps below ``path``'s budget."""
    prefix, steps = path.name.rsplit("__", 1)
    budgets = [
        int(p.name.rsplit("__", 1)[1]) for p in path.parent.glob(f"{prefix}__*") if p.is_dir()
    ]
    for budget in sorted((b for b in budgets if b < int(steps)), reverse=True):
        shorter = path.with_name(f"{prefix}__{budget}")
        if steps_done(shorter) >= budget:
            return shorter
    return None


def command(algo: str, path: Path, steps: int, flags: Sequence[str]) -> list[str] | None:
    """The CLI call that starts (``flags``), resumes or, when finished, skips (``None``) a run."""
    cli = [sys.executable, "-m", "era_control.cli", "train", algo]
    done = steps_done(path)
    if done >= steps:
        return None
    extendable = ALGORITHMS[algo].extendable
    if done == 0 and extendable and (shorter := shorter_finished_run(path)) is not None:
        shutil.rmtree(path, ignore_errors=True)  # a start killed before its first checkpoint
        shutil.copytree(shorter, path)
        done = steps_done(path)
    if done > 0:
        return [*cli, "--resume", str(path), *(["--steps", str(steps)] if extendable else [])]
    # Never checkpointed (or never started): start afresh; the CLI reuses such a folder.
    return [*cli, *flags, "--steps", str(steps), "--out", str(path.parent), "--run-name", path.name]


def run_all(jobs: dict[Path, list[str]], parallel: int = 1) -> float:
    """Run the commands, ``parallel`` at a time, each logging to ``<run_dir>.log``; returns wall s.

    A failing run is reported and the others continue (its row stays missing in the table).
    """
    pending, running = list(jobs.items()), []
    start = time.perf_counter()
    while pending or running:
        for proc, path in running:
            if proc.poll() not in (None, 0):
                print(f"FAILED (exit {proc.returncode}): {path}; see {path.name}.log", flush=True)
        running = [(p, path) for p, path in running if p.poll() is None]
        while pending and len(running) < parallel:
            path, cmd = pending.pop(0)
            print(f"[{time.perf_counter() - start:7.0f}s] start {path.name}", flush=True)
            log = path.with_name(path.name + ".log").open("a")  # the run's progress bar and errors
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), path))
        time.sleep(1.0)
    return time.perf_counter() - start


def eval_curves(path: Path, key: str = "eval/return") -> tuple[list[int], list[list[float]]]:
    """Steps and, per step, the per-seed values of ``key`` (empty lists when nothing is logged)."""
    if not (path / METRICS_FILE).exists():
        return [], []
    by_step: dict[int, list[float]] = {}
    for step, _, name, value in read_metrics(path / METRICS_FILE):
        if name == key:
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Mean of ``a - b`` over paired seeds and its 95 % t-interval (needs >= 2 pairs)."""
    diff = np.asarray(a) - np.asarray(b)
    t = _T975.get(len(diff) - 1, 1.96)
    half = t * diff.std(ddof=1) / np.sqrt(len(diff))
    return {"mean": float(diff.mean()), "ci95_low": float(diff.mean() - half),
            "ci95_high": float(diff.mean() + half)}  # fmt: skip


def repo_path(path: str | Path) -> str:
    """``path`` as result files name it: relative to the repository, or ``~/...`` under home.

    Raises:
        ValueError: The path is neither inside the repository nor under the home directory.
    """
    resolved = Path(path).expanduser().resolve()
    for root, prefix in ((REPO, ""), (Path.home().resolve(), "~/")):
        if resolved.is_relative_to(root):
            return prefix + resolved.relative_to(root).as_posix()
    raise ValueError(f"path {str(path)!r} is outside the repository {str(REPO)!r} and home")


def _portable(value: Any) -> Any:
    """``value`` with every path (a ``Path`` or an absolute path string) made ``repo_path``."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_portable(v) for v in value]
    if isinstance(value, Path) or (isinstance(value, str) and value.startswith(("/", "~"))):
        return repo_path(value)
    return value


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, naming every path relative to the repository.

    A result file must not record the absolute paths of the machine that produced it.
    """
    path.write_text(json.dumps(_portable(data), indent=2))
