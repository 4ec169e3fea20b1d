"""SAC-ERA vs SAC: final deterministic return (mean ± std over seeds) and learning curves.

    python packages/era-control/benchmarks/bench_returns.py \
        --tasks Hopper-v5 HalfCheetah-v5 --steps 100000 --seeds 3 [--jobs 4] [--device cpu]

Each (task, algorithm) pair is one ``era-control train sac`` run with all seeds in one
process; ``--jobs`` runs pairs in parallel. Re-running the command resumes unfinished runs
from their checkpoints and reuses finished ones. Writes ``results/returns.json`` and one
``results/returns_<task>.png`` per task; prints the table.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from era_control import checkpoint
from era_control.logging import METRICS_FILE, read_metrics
from era_control.plot import plot_runs

RESULTS = Path(__file__).parent / "results"
ALGORITHMS = {"SAC-ERA": "--era", "SAC": "--no-era"}


def command(args: argparse.Namespace, task: str, algo: str, run_dir: Path) -> list[str] | None:
    """The CLI call that starts, resumes or (None) skips a run."""
    cli = [sys.executable, "-m", "era_control.cli", "train", "sac"]
    if (run_dir / "checkpoint.pt").exists():
        if checkpoint.load(run_dir / "checkpoint.pt")["step"] >= args.steps:
            return None
        return [*cli, "--resume", str(run_dir)]
    return [
        *cli, "--env", task, ALGORITHMS[algo], "--steps", str(args.steps), "--seeds", str(args.seeds),
        "--eval-every", str(args.eval_every), "--eval-episodes", str(args.eval_episodes),
        "--checkpoint-every", "10000", "--device", args.device, "--threads", str(args.threads),
        "--out", str(run_dir.parent), "--run-name", run_dir.name, *args.extra,
    ]  # fmt: skip


def final_returns(run_dir: Path) -> tuple[int, np.ndarray]:
    """Step and per-seed value of the last evaluation."""
    rows = [
        (step, seed, v)
        for step, seed, key, v in read_metrics(run_dir / METRICS_FILE)
        if key == "eval/return"
    ]
    last = max(step for step, _, _ in rows)
    return last, np.array([v for step, _, v in rows if step == last])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["Hopper-v5", "HalfCheetah-v5"])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eval-every", type=int, default=5_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where runs, JSON and PNGs go")
    parser.add_argument("extra", nargs="*", help="extra flags for every run, after --")
    args = parser.parse_args()

    runs = {
        (t, a): args.out / "runs" / f"{t}__{a}__{args.steps}"
        for t in args.tasks
        for a in ALGORITHMS
    }
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    pending = [(cmd, key) for key, run_dir in runs.items() if (cmd := command(args, *key, run_dir))]
    running: list[subprocess.Popen] = []
    start = time.perf_counter()
    while pending or running:
        running = [p for p in running if p.poll() is None]
        while pending and len(running) < args.jobs:
            cmd, key = pending.pop(0)
            print(f"[{time.perf_counter() - start:7.0f}s] start {key}", flush=True)
            log = runs[key].with_suffix(".log").open("a")  # the run's progress bar and errors
            running.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        time.sleep(1.0)
    wall = time.perf_counter() - start

    results = []
    for (task, algo), run_dir in runs.items():
        step, returns = final_returns(run_dir)
        results.append({"task": task, "algorithm": algo, "step": step, "seeds": args.seeds,
                        "returns": returns.tolist(), "mean": float(returns.mean()), "std": float(returns.std())})  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        dirs = [runs[task, a] for a in ALGORITHMS]
        plot_runs(dirs, args.out / f"returns_{task}.png", labels=list(ALGORITHMS),
                  title=f"{task}, {args.seeds} seeds (mean ± std)")  # fmt: skip
    setup = {"steps": args.steps, "seeds": args.seeds, "eval_episodes": args.eval_episodes,
             "device": args.device, "threads": args.threads, "jobs": args.jobs, "wall_s": wall, "extra": args.extra}  # fmt: skip
    (args.out / "returns.json").write_text(
        json.dumps({"setup": setup, "results": results}, indent=2)
    )

    print(
        f"\nfinal deterministic return, {args.eval_episodes} episodes per seed, mean ± std over seeds"
    )
    print(f"| task | steps | {' | '.join(ALGORITHMS)} |\n|---|---|{'---|' * len(ALGORITHMS)}")
    for task in args.tasks:
        cells = [
            f"{r['mean']:.0f} ± {r['std']:.0f}"
            for a in ALGORITHMS
            for r in results
            if r["task"] == task and r["algorithm"] == a
        ]
        step = min(r["step"] for r in results if r["task"] == task)
        print(f"| {task} | {step} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
