"""A few-minute SAC-ERA vs SAC comparison on a small MuJoCo task; writes curves and a table.

``era-control demo --out runs/demo/era-control`` (or ``python -m era_control.demo``).
Same code path as ``era-control train sac``: two runs, identical except ``era``.
"""

import argparse
import json
from pathlib import Path

from era_control import sac
from era_control.plot import curve, plot_runs
from era_control.runs import evaluate_run, start_run

__all__ = ["run"]


def run(
    out: Path, env: str = "InvertedDoublePendulum-v5", steps: int = 15_000, seeds: int = 2
) -> int:
    """Train SAC-ERA and SAC with ``seeds`` seeds each; write ``curves.png`` and ``results.json``."""
    runs, summary = {}, {}
    for label, era in (("SAC-ERA", True), ("SAC", False)):
        cfg = sac.SACConfig(
            env=env, steps=steps, seeds=seeds, era=era, out=str(out), run_name=label.lower(),
            learning_starts=min(1_000, steps // 4), eval_every=max(steps // 10, 1), log_every=max(steps // 20, 1),
            hidden=(128, 128), tensorboard=False,
        )  # fmt: skip
        run_dir = start_run("sac", cfg)
        print(f"== {label}: {run_dir}")
        code = sac.train(cfg, run_dir)
        if code:
            return code
        runs[label] = run_dir
        final = evaluate_run(run_dir, episodes=5)
        steps_, mean, _ = curve(run_dir)
        summary[label] = {"final_mean": float(final.mean()), "final_std": float(final.std()),
                          "curve_steps": steps_.tolist(), "curve_mean": mean.tolist()}  # fmt: skip
    png = plot_runs(
        list(runs.values()), out / "curves.png", labels=list(runs), title=f"{env}, {seeds} seeds"
    )
    (out / "results.json").write_text(
        json.dumps({"env": env, "steps": steps, "seeds": seeds, **summary}, indent=2)
    )
    print(f"\n{'algorithm':<10} final deterministic return ({seeds} seeds x 5 episodes)")
    for label, result in summary.items():
        print(f"{label:<10} {result['final_mean']:8.1f} ± {result['final_std']:.1f}")
    print(f"curves: {png}")
    return 0


def main() -> int:
    """``python -m era_control.demo``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo/era-control"))
    parser.add_argument("--env", default="InvertedDoublePendulum-v5")
    parser.add_argument("--steps", type=int, default=15_000)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    return run(args.out, args.env, args.steps, args.seeds)


if __name__ == "__main__":
    raise SystemExit(main())
