"""PPO-ERA (state- and batch-level) vs PPO at the paper's scale: 4 MuJoCo tasks, 5 paired seeds.

    python packages/era-control/benchmarks/bench_ppo_returns.py --jobs 2         # 1M steps per cell
    python packages/era-control/benchmarks/bench_ppo_returns.py --steps 3145728  # the paper's 3M
    python packages/era-control/benchmarks/bench_ppo_returns.py --report-only    # tables from what exists

The paper's PPO row (Hopper, HalfCheetah, Walker2d, Ant; 3M steps) with CleanRL's PPO settings:
each (task, arm) is one ``era-control train ppo`` run with all seeds in one process, seed k
initialising and feeding every arm alike. The ERA arms use the authors' target (0.25 nats per
action dim). ``--steps`` must be whole rollouts (2048 by default): 1,048,576 (512 rollouts) is
"1M" and 3,145,728 "3M". PPO anneals its learning rate over the budget, so a 3M run is its own
run, never an extension of a 1M one.

Run folders live outside the work tree, in ``--runs`` (default ``$ERA_BENCH_RUNS`` or
``~/.cache/era-control/benchmarks``, under ``ppo_returns/``), so a later invocation finds them:
re-running resumes unfinished runs from their checkpoints and skips finished ones.
``--report-only`` tabulates every budget found there, finished or not, and writes
``results/ppo_returns.json`` (runs named relative to ``--runs``), one
``results/ppo_returns_<task>_<steps>.png`` (return and executed entropy) per task, and prints the tables.
"""

import argparse
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
from _runs import (
    command,
    default_runs_root,
    eval_curves,
    paired_difference,
    run_all,
    run_dir,
    steps_done,
    write_json,
)

from era_control.envs import env_dims

RESULTS = Path(__file__).parent / "results"
TASKS = ["Hopper-v5", "HalfCheetah-v5", "Walker2d-v5", "Ant-v5"]
ARMS = {
    "PPO": ["--no-era"],
    "PPO-ERA (state)": ["--era", "--era-level", "state"],
    "PPO-ERA (batch)": ["--era", "--era-level", "batch"],
}
BASELINE = "PPO"
# TD3's published returns on these tasks (Fujimoto, van Hoof, Meger 2018, "Addressing Function
# Approximation Error in Actor-Critic Methods", Table 1: max average return over 1M steps,
# MuJoCo v1 tasks): a fixed, external scale for the normalised score.
REFERENCE = {"Hopper-v5": 3564.07, "HalfCheetah-v5": 9636.95, "Walker2d-v5": 4682.82, "Ant-v5": 4372.44}  # fmt: skip
REFERENCE_SOURCE = "TD3, Fujimoto et al. 2018, Table 1 (1M steps, v1 tasks)"


def budgets_found(root: Path) -> list[int]:
    """Every step budget that has a run folder under ``root``."""
    return sorted({int(p.name.rsplit("__", 1)[1]) for p in (root / "runs").glob("*__*__*") if p.is_dir()})  # fmt: skip


def cell(path: Path, budget: int, action_dim: int) -> dict[str, Any] | None:
    """One (task, arm, budget) run's final returns, curves and executed entropy; None if unstarted."""
    steps, per_seed = eval_curves(path)
    if not steps:
        return None
    final = np.array(per_seed[-1])
    h_steps, h_per_seed = eval_curves(path, "entropy/policy")  # what samples (Gaussian's entropy)
    floor = eval_curves(path, "entropy/target")[1]
    done = steps_done(path)
    return {
        "run": path.name, "step": steps[-1], "finished": done >= budget, "returns": final.tolist(),
        "mean": float(final.mean()), "std": float(final.std()),
        "curve_steps": steps, "curve_returns_per_seed": per_seed,
        "entropy_steps": h_steps, "entropy_per_seed": h_per_seed,
        "entropy_final_per_dim": float(np.mean(h_per_seed[-1])) / action_dim if h_per_seed else None,
        "floor_final_per_dim": float(np.mean(floor[-1])) / action_dim if floor else None,
    }  # fmt: skip


def normalised_scores(cells: dict[tuple[str, str], dict[str, Any]], tasks: list[str], arms: list[str]) -> dict[str, Any]:  # fmt: skip
    """Mean over tasks of each arm's final return over (a) the best arm's mean, (b) TD3's published."""
    if not all((t, a) in cells for t in tasks for a in arms):
        return {}
    best = {t: max(cells[t, a]["mean"] for a in arms) for t in tasks}
    return {
        a: {"by_best_arm": float(np.mean([cells[t, a]["mean"] / best[t] for t in tasks])),
            "by_reference": float(np.mean([cells[t, a]["mean"] / REFERENCE[t] for t in tasks]))
            if all(t in REFERENCE for t in tasks) else None}
        for a in arms
    }  # fmt: skip


def plot_task(task: str, rows: dict[str, dict[str, Any]], budget: int, out: Path) -> None:
    """Return (left) and executed entropy per action dim with the floor (right), mean ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dim = env_dims(task)[1]
    fig, (ret_ax, h_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for arm, r in rows.items():
        for ax, x, ys, scale in ((ret_ax, r["curve_steps"], r["curve_returns_per_seed"], 1.0),
                                 (h_ax, r["entropy_steps"], r["entropy_per_seed"], dim)):  # fmt: skip
            if not ys:
                continue
            full = [y for y in ys if len(y) == len(ys[0])]  # steps every seed logged
            values = np.array(full[: len(x)]) / scale
            mean, std = values.mean(1), values.std(1)
            ax.plot(x[: len(mean)], mean, label=arm)
            ax.fill_between(x[: len(mean)], mean - std, mean + std, alpha=0.2)
    if floors := [
        r["floor_final_per_dim"] for r in rows.values() if r["floor_final_per_dim"] is not None
    ]:
        h_ax.axhline(
            floors[0], color="k", ls="--", lw=1, label=f"ERA floor ({floors[0]:.2f} nats/dim)"
        )
    ret_ax.set(
        xlabel="environment steps", ylabel="deterministic return", title=f"{task}, {budget} steps"
    )
    h_ax.set(xlabel="environment steps", ylabel="Gaussian entropy per action dim (nats)", title="executed entropy")  # fmt: skip
    for ax in (ret_ax, h_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def report(root: Path, tasks: list[str], arms: list[str], out: Path, setup: dict[str, Any]) -> None:
    """Tables, JSON and plots of every budget found under ``root``."""
    out.mkdir(parents=True, exist_ok=True)
    budgets = []
    for budget in budgets_found(root):
        cells = {}
        for task in tasks:
            for arm in arms:
                if (
                    c := cell(run_dir(root, task, arm, budget), budget, env_dims(task)[1])
                ) is not None:
                    cells[task, arm] = c
        for (task, arm), c in cells.items():  # paired with PPO at the same eval step, seed by seed
            base = cells.get((task, BASELINE))
            if arm != BASELINE and base and base["step"] == c["step"] and len(c["returns"]) > 1:
                c["minus_ppo"] = paired_difference(c["returns"], base["returns"])
        finished = {k: c for k, c in cells.items() if c["finished"]}
        budgets.append({"steps": budget, "cells": [{"task": t, "arm": a, **c} for (t, a), c in cells.items()],
                        "normalised_score": normalised_scores(finished, tasks, arms)})  # fmt: skip
        for task in tasks:
            rows = {a: cells[task, a] for a in arms if (task, a) in cells}
            if rows:
                plot_task(task, rows, budget, out / f"ppo_returns_{task}_{budget}.png")

        print(f"\n## {budget} env steps per seed: final deterministic return, mean ± std over paired seeds [per seed]")  # fmt: skip
        print(
            "| task | arm | step | return | per seed | minus PPO (95 % CI) | executed H / dim (floor) |"
        )
        print("|---|---|---|---|---|---|---|")
        for (task, arm), c in cells.items():
            d = c.get("minus_ppo")
            diff = f"{d['mean']:+.0f} [{d['ci95_low']:+.0f}, {d['ci95_high']:+.0f}]" if d else ""
            h = (
                f"{c['entropy_final_per_dim']:.2f}"
                if c["entropy_final_per_dim"] is not None
                else ""
            )
            floor = (
                f" ({c['floor_final_per_dim']:.2f})" if c["floor_final_per_dim"] is not None else ""
            )
            step = f"{c['step']}" + ("" if c["finished"] else " (running)")
            seeds = ", ".join(f"{v:.0f}" for v in c["returns"])
            print(f"| {task} | {arm} | {step} | {c['mean']:.0f} ± {c['std']:.0f} | {seeds} | {diff} | {h}{floor} |")  # fmt: skip
        if scores := budgets[-1]["normalised_score"]:
            print(f"\nnormalised score (mean over the {len(tasks)} tasks): by the best arm's mean per task; by {REFERENCE_SOURCE}")  # fmt: skip
            for arm, s in scores.items():
                ref = "n/a" if s["by_reference"] is None else f"{s['by_reference']:.2f}"
                print(f"  {arm}: {s['by_best_arm']:.2f} / {ref}")
        else:
            print("\nnormalised score: needs every cell finished")
    write_json(out / "ppo_returns.json", {"setup": setup, "reference": {"source": REFERENCE_SOURCE, "returns": REFERENCE}, "budgets": budgets})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--steps", type=int, default=1_048_576, help="env steps per seed; whole rollouts")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--eval-every", type=int, default=50_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--checkpoint-every", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one per core)")
    parser.add_argument("--runs", type=Path, default=default_runs_root(), help="root of the run folders (outside the work tree)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS, help="where JSON and PNGs go")
    parser.add_argument("--report-only", action="store_true", help="only tabulate what exists")
    parser.add_argument("extra", nargs="*", help="extra flags for every run, after --")
    args = parser.parse_args()
    root = args.runs / "ppo_returns"

    wall = 0.0
    if not args.report_only:
        common = ["--seeds", str(args.seeds), "--eval-every", str(args.eval_every),
                  "--eval-episodes", str(args.eval_episodes), "--checkpoint-every", str(args.checkpoint_every),
                  "--device", "cpu", "--threads", str(args.threads), "--no-tensorboard"]  # fmt: skip
        jobs = {}
        for task in args.tasks:  # task by task, so that whole tasks finish first
            for arm in args.arms:
                path = run_dir(root, task, arm, args.steps)
                if (cmd := command("ppo", path, args.steps, ["--env", task, *ARMS[arm], *common, *args.extra])) is not None:  # fmt: skip
                    jobs[path] = cmd
        (root / "runs").mkdir(parents=True, exist_ok=True)
        wall = run_all(jobs, args.jobs)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()  # fmt: skip
    setup = {k: v for k, v in vars(args).items() if k not in ("runs", "out")}
    report(root, args.tasks, args.arms, args.out, setup | {"wall_s": wall, "commit": commit})


if __name__ == "__main__":
    main()
