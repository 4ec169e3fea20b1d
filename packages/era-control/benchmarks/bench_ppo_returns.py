"""PPO-ERA (state- and batch-level) vs PPO: final deterministic return and learning curves.

    python packages/era-control/benchmarks/bench_ppo_returns.py \
        --tasks Hopper-v5 HalfCheetah-v5 --steps 500000 --seeds 3 [--jobs 3] [-- --num-envs 4]

Each (task, variant) pair is one ``era-control train ppo`` run with all seeds in one process
(CleanRL's PPO settings unless extra flags follow ``--``); ``--jobs`` runs pairs in parallel.
Re-running the command resumes unfinished runs from their checkpoints and reuses finished
ones, so a long benchmark can be stopped and continued. Walker2d-v5, Ant-v5 and 1M-3M steps
(the paper's setting) run the same way. Writes ``results/ppo_returns.json`` and one
``results/ppo_returns_<task>.png`` per task; prints the table.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from era_control import checkpoint
from era_control.plot import curve, plot_runs

RESULTS = Path(__file__).parent / "results"
VARIANTS = {
    "PPO-ERA (state)": ["--era", "--era-level", "state"],
    "PPO-ERA (batch)": ["--era", "--era-level", "batch"],
    "PPO": ["--no-era"],
}


def command(args: argparse.Namespace, task: str, variant: str, run_dir: Path) -> list[str] | None:
    """The CLI call that starts, resumes or (None) skips a run."""
    cli = [sys.executable, "-m", "era_control.cli", "train", "ppo"]
    if (run_dir / "checkpoint.pt").exists():
        if checkpoint.load(run_dir / "checkpoint.pt")["step"] >= args.steps:
            return None
        return [*cli, "--resume", str(run_dir)]
    return [
        *cli, "--env", task, *VARIANTS[variant], "--steps", str(args.steps),
        "--seeds", str(args.seeds), "--eval-every", str(args.eval_every),
        "--eval-episodes", str(args.eval_episodes), "--checkpoint-every", str(args.checkpoint_every),
        "--device", args.device, "--threads", str(args.threads), "--no-tensorboard",
        "--out", str(run_dir.parent), "--run-name", run_dir.name, *args.extra,
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["Hopper-v5", "HalfCheetah-v5"])
    parser.add_argument("--steps", type=int, default=500_000, help="env steps per seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--eval-every", type=int, default=20_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--checkpoint-every", type=int, default=50_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where runs, JSON and PNGs go")
    parser.add_argument("extra", nargs="*", help="extra flags for every run, after --")
    args = parser.parse_args()

    slug = {v: v.lower().replace(" (", "-").replace(")", "") for v in VARIANTS}  # ppo-era-state
    runs = {
        (task, variant): args.out / "runs" / f"{task}__{slug[variant]}__{args.steps}"
        for task in args.tasks
        for variant in args.variants
    }
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    pending = [(cmd, key) for key, run_dir in runs.items() if (cmd := command(args, *key, run_dir))]
    running: list[tuple[subprocess.Popen, tuple[str, str]]] = []
    start = time.perf_counter()
    while pending or running:
        for proc, key in running:
            if proc.poll() not in (None, 0):
                raise SystemExit(f"{key} failed (exit {proc.returncode}); see {runs[key]}.log")
        running = [(p, key) for p, key in running if p.poll() is None]
        while pending and len(running) < args.jobs:
            cmd, key = pending.pop(0)
            print(f"[{time.perf_counter() - start:7.0f}s] start {key}", flush=True)
            log = runs[key].with_suffix(".log").open("a")  # the run's progress bar and errors
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), key))
        time.sleep(1.0)
    wall = time.perf_counter() - start

    results = []
    for (task, variant), run_dir in runs.items():
        steps, mean, std = curve(run_dir, "eval/return")  # mean ± std over seeds
        results.append({"task": task, "variant": variant, "step": int(steps[-1]), "seeds": args.seeds,
                        "mean": float(mean[-1]), "std": float(std[-1]), "run_dir": str(run_dir)})  # fmt: skip
    for task in args.tasks:
        plot_runs([runs[task, v] for v in args.variants], args.out / f"ppo_returns_{task}.png",
                  labels=args.variants, title=f"{task}, {args.seeds} seeds (mean ± std)")  # fmt: skip
    setup = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()} | {
        "wall_s": wall
    }
    (args.out / "ppo_returns.json").write_text(
        json.dumps({"setup": setup, "results": results}, indent=2)
    )

    print(f"\nfinal deterministic return, {args.eval_episodes} episodes per seed, mean ± std over {args.seeds} seeds")  # fmt: skip
    print(f"| task | steps | {' | '.join(args.variants)} |\n|---|---|{'---|' * len(args.variants)}")
    for task in args.tasks:
        row = {r["variant"]: r for r in results if r["task"] == task}
        cells = [f"{row[v]['mean']:.0f} ± {row[v]['std']:.0f}" for v in args.variants]
        print(f"| {task} | {min(r['step'] for r in row.values())} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
