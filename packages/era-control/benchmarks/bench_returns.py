"""SAC-ERA vs SAC: final deterministic return per seed, mean ± std, paired differences, curves.

    python packages/era-control/benchmarks/bench_returns.py                # the full table
    python packages/era-control/benchmarks/bench_returns.py --tasks Hopper-v5 \\
        --arms SAC-ERA SAC --steps 30000                                   # a subset

Arms: SAC-ERA at SAC's target (-1 per action dim, the default), SAC, and SAC-ERA at the
authors' 0.25 per dim. Seeds are paired (seed k initialises and feeds every arm alike).
Each (task, arm) is one ``era-control train sac`` run with all seeds in one process;
``--jobs`` runs several at once. Re-running resumes unfinished runs and reuses finished ones;
a new budget continues a copy of the finished shorter run of the same arm (``_runs.py``).
Writes ``results/returns.json`` (per-eval returns and the acting distribution's entropy per
seed too) and one ``results/returns_<task>.png`` per task; prints the table and what is still
missing.
"""

import argparse
from pathlib import Path

import numpy as np
from _runs import (
    command,
    eval_curves,
    paired_difference,
    run_all,
    run_dir,
    steps_done,
    write_json,
)

from era_control.plot import plot_runs

RESULTS = Path(__file__).parent / "results"
TASKS = ["Hopper-v5", "HalfCheetah-v5", "dm_control/walker-walk-v0"]
ARMS = {
    "SAC-ERA": ["--era"],
    "SAC": ["--no-era"],
    "SAC-ERA (authors' 0.25/dim)": ["--era", "--preset", "authors-target"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eval-every", type=int, default=5_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where runs, JSON and PNGs go")
    parser.add_argument("--report-only", action="store_true", help="only tabulate what exists")
    parser.add_argument("extra", nargs="*", help="extra flags for every run, after --")
    args = parser.parse_args()

    runs = {(t, a): run_dir(args.out, t, a, args.steps) for t in args.tasks for a in args.arms}
    common = ["--seeds", str(args.seeds), "--eval-every", str(args.eval_every),
              "--eval-episodes", str(args.eval_episodes), "--checkpoint-every", "5000",
              "--device", args.device, "--threads", str(args.threads), "--no-tensorboard"]  # fmt: skip
    jobs = {}
    for (task, arm), path in runs.items():
        cmd = command("sac", path, args.steps, ["--env", task, *ARMS[arm], *common, *args.extra])
        if cmd is not None:
            jobs[path] = cmd
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    wall = 0.0 if args.report_only else run_all(jobs, args.jobs)

    results, missing = [], []
    for (task, arm), path in runs.items():
        steps, per_seed = eval_curves(path)
        done = steps_done(path)
        if done < args.steps:
            missing.append(f"{task} / {arm}: {done} of {args.steps} steps")
        if not steps:
            continue
        final = np.array(per_seed[-1])
        # What acts: the executed distribution's entropy over the last logged batch, per seed.
        entropy = {
            key: eval_curves(path, f"entropy/{key}")[1]
            for key in ("executed", "executed_min", "target")
        }
        results.append({"task": task, "arm": arm, "step": steps[-1], "finished": done >= args.steps,
                        "returns": final.tolist(), "mean": float(final.mean()), "std": float(final.std()),
                        "curve_steps": steps, "curve_returns_per_seed": per_seed,
                        **{f"entropy_{k}": v[-1] for k, v in entropy.items() if v}})  # fmt: skip
    by_key = {(r["task"], r["arm"]): r for r in results}
    for r in results:  # paired with SAC at the same step, seed by seed
        sac = by_key.get((r["task"], "SAC"))
        if r["arm"] != "SAC" and sac and sac["step"] == r["step"] and len(r["returns"]) > 1:
            r["minus_sac"] = paired_difference(r["returns"], sac["returns"])
    for task in args.tasks:
        arms = [a for a in args.arms if (task, a) in by_key]
        if arms:
            plot_runs([runs[task, a] for a in arms], args.out / f"returns_{task.replace('/', '-')}.png",
                      labels=arms, title=f"{task}, {args.seeds} seeds (mean ± std)")  # fmt: skip
    write_json(args.out / "returns.json",
               {"setup": vars(args) | {"wall_s": wall}, "results": results, "missing": missing})  # fmt: skip

    print(f"\nfinal deterministic return, {args.eval_episodes} episodes per seed, "
          f"mean ± std over {args.seeds} paired seeds [per seed]")  # fmt: skip
    print("executed entropy: batch mean / batch min of the acting distribution at the last log row, "
          "mean / min over seeds, beside the target")  # fmt: skip
    print(
        "| task | arm | step | return | per seed | minus SAC (95 % CI) | executed H mean / min | target |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        d = r.get("minus_sac")
        diff = f"{d['mean']:+.0f} [{d['ci95_low']:+.0f}, {d['ci95_high']:+.0f}]" if d else ""
        seeds = ", ".join(f"{v:.0f}" for v in r["returns"])
        entropy = (f"{np.mean(r['entropy_executed']):.2f} / {np.min(r['entropy_executed_min']):.2f}"
                   if "entropy_executed" in r else "")  # fmt: skip
        target = f"{np.mean(r['entropy_target']):.2f}" if "entropy_target" in r else ""
        print(f"| {r['task']} | {r['arm']} | {r['step']} | {r['mean']:.0f} ± {r['std']:.0f} | {seeds} "
              f"| {diff} | {entropy} | {target} |")  # fmt: skip
    for line in missing:
        print(f"missing: {line}")


if __name__ == "__main__":
    main()
