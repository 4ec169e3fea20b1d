"""The demo at several seeds: its five arms (``era_llm.demo.ARMS``), per seed and mean ± std.

Each seed runs ``era-llm demo`` with its defaults (its own model initialisation, problems and
warm start; the arms of a seed share that start, their seed and their data order, so
differences between arms are paired). A seed whose ``summary.json`` exists is read, not rerun,
so an interrupted benchmark continues where it stopped.

    OMP_NUM_THREADS=1 python packages/era-llm/benchmarks/bench_demo.py [--seeds 0 1 2]
    # the negative control: the previous demo's addition task and settings
    OMP_NUM_THREADS=1 python packages/era-llm/benchmarks/bench_demo.py --operation add \
        --sft-steps 1000 --era-omega-low 0.6 --name bench_demo_add

Prints the table and writes ``results/<name>.json`` and one plot per seed
(``results/<name>_seed<S>.png``).
"""

import argparse
import dataclasses
import json
import math
import shutil
import statistics
from pathlib import Path

from era_llm.demo import ARMS, DemoConfig, run_demo

RESULTS = Path(__file__).parent / "results"
# Two-sided 95 % Student-t quantiles by degrees of freedom, for the paired-difference CIs.
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _row(summary: dict, arm: str, big_k: int) -> dict[str, float]:
    final, first, result = summary["final"][arm], summary["first"][arm], summary["eval"][arm]
    return {
        "response_entropy_start": first["entropy/response"],
        "response_entropy_end": final["entropy/response"],
        "token_entropy_end": final["entropy/token"],
        "train_reward_end": final["train/reward"],
        "pass@1": result["pass@1"],
        "pass@8": result["pass@8"],
        f"pass@{big_k}": result[f"pass@{big_k}"],
    }


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def _paired(a: list[float], b: list[float]) -> dict[str, float]:
    """Mean of the paired differences ``a - b`` and its 95 % t interval (needs 2..10 seeds)."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean = statistics.mean(diffs)
    half = T_95[len(diffs) - 1] * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return {"mean": mean, "low": mean - half, "high": mean + half}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output-dir", type=Path, default=Path("runs/bench-demo"))
    parser.add_argument("--name", default="bench_demo", help="results file name")
    defaults = DemoConfig()
    parser.add_argument("--operation", default=defaults.operation, choices=["multiply", "add"])
    parser.add_argument("--sft-steps", type=int, default=defaults.sft_steps)
    parser.add_argument("--era-omega-low", type=float, default=defaults.era_omega_low)
    args = parser.parse_args()
    options = {
        "operation": args.operation,
        "sft_steps": args.sft_steps,
        "era_omega_low": args.era_omega_low,
    }
    if not 2 <= len(args.seeds) <= 10:
        parser.error(f"--seeds: give 2 to 10 seeds for the paired intervals, got {len(args.seeds)}")

    summaries = {}
    for seed in args.seeds:
        out = args.output_dir / f"seed-{seed}"
        cfg, done = DemoConfig(output_dir=str(out), seed=seed, **options), out / "summary.json"
        if not done.is_file():
            summaries[seed] = run_demo(cfg)
            continue
        summaries[seed] = json.loads(done.read_text())
        ran = {k: v for k, v in summaries[seed]["config"].items() if k != "output_dir"}
        if ran != {k: v for k, v in dataclasses.asdict(cfg).items() if k != "output_dir"}:
            parser.error(f"{done} was run with other settings; pick another --output-dir")
    config = summaries[args.seeds[0]]["config"]
    big_k = config["eval_n"]
    columns = list(_row(summaries[args.seeds[0]], ARMS[0], big_k))
    rows = {seed: {arm: _row(s, arm, big_k) for arm in ARMS} for seed, s in summaries.items()}
    warm = {seed: s["eval"]["sft"] for seed, s in summaries.items()}

    print(f"| seed | warm start pass@1 / pass@{big_k} | arm | " + " | ".join(columns) + " |")
    print("|---|---|---|" + "---:|" * len(columns))
    for seed in args.seeds:
        for index, arm in enumerate(ARMS):
            start = (
                f"{warm[seed]['pass@1']:.3f} / {warm[seed][f'pass@{big_k}']:.3f}"
                if index == 0
                else ""
            )
            cells = " | ".join(f"{rows[seed][arm][c]:.3f}" for c in columns)
            print(f"| {seed if index == 0 else ''} | {start} | {arm} | {cells} |")
    for index, arm in enumerate(ARMS):
        cells = " | ".join(_mean_std([rows[s][arm][c] for s in args.seeds]) for c in columns)
        print(f"| {'mean ± std' if index == 0 else ''} | | {arm} | {cells} |")

    paired = {}
    for a, b in (
        ("grpo-era", "grpo"),
        ("grpo-era", "grpo-entropy-bonus"),
        ("grpo-entropy-bonus", "grpo"),
        ("clip-cov", "grpo"),
        ("kl-cov", "grpo"),
        ("grpo-era", "clip-cov"),
        ("grpo-era", "kl-cov"),
    ):
        for column in ("response_entropy_end", "pass@1", f"pass@{big_k}"):
            values = [[rows[s][arm][column] for s in args.seeds] for arm in (a, b)]
            paired[f"{a} - {b}: {column}"] = _paired(*values)
    print(f"\npaired differences over {len(args.seeds)} seeds (mean [95 % t interval])")
    for name, d in paired.items():
        print(f"  {name}: {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]")

    RESULTS.mkdir(exist_ok=True)
    record = {
        "config": config,
        "seeds": args.seeds,
        "warm_start": warm,
        "per_seed": rows,
        "paired_differences": paired,
    }
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=2))
    for seed in args.seeds:
        shutil.copy(
            args.output_dir / f"seed-{seed}" / "demo.png", RESULTS / f"{args.name}_seed{seed}.png"
        )
    print(f"\nwrote {RESULTS / f'{args.name}.json'}")


if __name__ == "__main__":
    main()
