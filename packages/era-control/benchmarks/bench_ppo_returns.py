"""PPO-ERA (state- and batch-level) vs PPO: final deterministic return and learning curves.

    python packages/era-control/benchmarks/bench_ppo_returns.py \
        --tasks Hopper-v5 HalfCheetah-v5 --steps 501760 --seeds 3 [--jobs 3] [-- --num-envs 4]

Each (task, variant) pair is one ``era-control train ppo`` run with all seeds in one process
(CleanRL's PPO settings unless extra flags follow ``--``); ``--jobs`` runs pairs in parallel.
``--steps`` must be a multiple of the rollout size ``num_envs * num_steps``: 2048 by default
(501,760 is 245 rollouts); with ``-- --num-envs 4`` it is 8192, e.g. ``--steps 507904``.
Re-running the command resumes unfinished runs from their checkpoints and reuses finished
ones, so a long benchmark can be stopped and continued. Walker2d-v5, Ant-v5 and 1M-3M steps
(the paper's setting) run the same way. Writes ``results/ppo_returns.json`` and one
``results/ppo_returns_<task>.png`` per task; prints the table.
"""

import argparse
from pathlib import Path

from _runs import command, run_all, run_dir, write_json

from era_control.plot import curve, plot_runs

RESULTS = Path(__file__).parent / "results"
VARIANTS = {
    "PPO-ERA (state)": ["--era", "--era-level", "state"],
    "PPO-ERA (batch)": ["--era", "--era-level", "batch"],
    "PPO": ["--no-era"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["Hopper-v5", "HalfCheetah-v5"])
    parser.add_argument(
        "--steps", type=int, default=501_760, help="env steps per seed; whole rollouts"
    )
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

    runs = {(t, v): run_dir(args.out, t, v, args.steps) for t in args.tasks for v in args.variants}
    common = ["--seeds", str(args.seeds), "--eval-every", str(args.eval_every),
              "--eval-episodes", str(args.eval_episodes), "--checkpoint-every", str(args.checkpoint_every),
              "--device", args.device, "--threads", str(args.threads), "--no-tensorboard"]  # fmt: skip
    jobs = {}
    for (task, variant), path in runs.items():
        flags = ["--env", task, *VARIANTS[variant], *common, *args.extra]
        if (cmd := command("ppo", path, args.steps, flags)) is not None:
            jobs[path] = cmd
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    wall = run_all(jobs, args.jobs)

    results = []
    for (task, variant), path in runs.items():
        steps, mean, std = curve(path, "eval/return")  # mean ± std over seeds
        results.append({"task": task, "variant": variant, "step": int(steps[-1]), "seeds": args.seeds,
                        "mean": float(mean[-1]), "std": float(std[-1]), "run_dir": path})  # fmt: skip
    for task in args.tasks:
        plot_runs([runs[task, v] for v in args.variants], args.out / f"ppo_returns_{task}.png",
                  labels=args.variants, title=f"{task}, {args.seeds} seeds (mean ± std)")  # fmt: skip
    setup = vars(args) | {"wall_s": wall}
    write_json(args.out / "ppo_returns.json", {"setup": setup, "results": results})

    print(f"\nfinal deterministic return, {args.eval_episodes} episodes per seed, mean ± std over {args.seeds} seeds")  # fmt: skip
    print(f"| task | steps | {' | '.join(args.variants)} |\n|---|---|{'---|' * len(args.variants)}")
    for task in args.tasks:
        row = {r["variant"]: r for r in results if r["task"] == task}
        cells = [f"{row[v]['mean']:.0f} ± {row[v]['std']:.0f}" for v in args.variants]
        print(f"| {task} | {min(r['step'] for r in row.values())} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
