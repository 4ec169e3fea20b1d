"""Accuracy and calibration of ERA against cross-entropy, both heads, before and after T.

Arms (``--arms``), each spec a comma-separated list of ``era-vision train`` settings:

- ``ce``: plain cross-entropy;
- ``ls=EPS``: label smoothing ``--label-smoothing EPS`` (alone: the label-smoothing baseline);
- ``era=CAL:H0``: ERA head with ``--era-calibration CAL`` (paper or tight) and
  ``--min-entropy H0``; ``era=paper:0.6,ls=0.1`` is ERA with label smoothing, as the
  authors trained.

Regimes (``--regimes``) are ``IMAGESxEPOCHS``: that many training images (a seeded,
stratified draw from the training split minus the held-out calibration split) for that many
epochs. The defaults are the full table: Fashion-MNIST, 20 000 x 3 (the earlier table) and
5 000 x 30 (where cross-entropy overfits), 6 arms, seeds 0 1 2. A seed fixes the initial
weights, the data order and the held-out split, so runs with the same seed are paired across
arms. Each arm is evaluated on the test set with every head (``era``: the floored output,
``plain``: softmax of the same logits) before and after temperature scaling fitted on the
held-out training images, and compared with ``ce`` seed by seed: mean paired difference with
a 95 % t-interval over seeds.

Runs live in --out and resume, so an interrupted table continues where it stopped, and a
finished run is read back from its ``eval.json``; the JSON is rewritten after each run. ``--save-logits`` keeps each run's test logits
(``<out>/<regime>/<arm>-seed<s>/test_logits.pt``).
"""

import argparse
import json
import math
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
import yaml
from scipy import stats

from era_vision.plots import markdown_table
from era_vision.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results"
ARMS = ["ce", "ls=0.1", "era=paper:0.6", "era=tight:0.1", "era=tight:0.37", "era=paper:0.6,ls=0.1"]
REGIMES = ["20000x3", "5000x30"]
METRICS = ["top1", "nll", "ece", "entropy_mean", "entropy_min", "temperature"]
COMPARED = ["top1", "nll", "ece"]  # reported as paired differences against ce


def parse_arm(spec: str) -> dict[str, Any]:
    """``TrainConfig`` overrides of an arm spec such as ``era=tight:0.37,ls=0.1``."""
    settings: dict[str, Any] = {"regularizer": "ce"}
    for part in spec.split(","):
        key, _, value = part.partition("=")
        if key == "ce" and not value:
            continue
        if key == "ls":
            settings["label_smoothing"] = float(value)
            if settings["regularizer"] == "ce":
                settings["regularizer"] = "label-smoothing"
        elif key == "era" and value.count(":") == 1:
            calibration, min_entropy = value.split(":")
            if calibration not in ("paper", "tight"):
                raise ValueError(f"arm {spec!r}: calibration must be paper or tight")
            settings |= {
                "regularizer": "era",
                "era_calibration": calibration,
                "min_entropy": float(min_entropy),
            }
        else:
            raise ValueError(f"arm {spec!r}: {part!r} is not ce, ls=EPS or era=CAL:H0")
    return settings


def parse_regime(spec: str) -> tuple[int, int]:
    """``IMAGESxEPOCHS`` as two integers."""
    images, _, epochs = spec.partition("x")
    if not (images.isdigit() and epochs.isdigit()):
        raise ValueError(f"regime {spec!r} must be IMAGESxEPOCHS, e.g. 5000x30")
    return int(images), int(epochs)


def run_one(args: argparse.Namespace, regime: str, arm: str, seed: int) -> list[dict]:
    torch.set_num_threads(args.threads)
    images, epochs = parse_regime(regime)
    out = Path(args.out) / regime / f"{arm}-seed{seed}"
    cfg = TrainConfig(
        model=args.model,
        data=args.data,
        out=str(out),
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        augment=args.augment,
        train_subset=images,
        calibration_holdout=args.holdout,
        device=args.device,
        workers=args.workers,
        seed=seed,
        eval_every=epochs,  # the table needs the final test metrics only
        **parse_arm(arm),
    )
    done = out / "eval.json"  # written once the run has finished
    if done.exists() and (out / "test_logits.pt").exists() >= args.save_logits:
        if yaml.safe_load((out / "config.yaml").read_text()) != asdict(cfg):
            raise ValueError(f"{out} holds a run with other settings; pass another --out")
        rows = json.loads(done.read_text())["rows"]
    else:
        result = train(cfg)
        rows, evaluation = result["metrics"], result["evaluation"]
        if args.save_logits:
            logits = {"logits": evaluation.logits, "labels": evaluation.labels}
            torch.save(logits | {"temperatures": evaluation.temperatures}, out / "test_logits.pt")
    return [{"regime": regime, "arm": arm, "seed": seed, **row} for row in rows]


def paired_difference(values: list[float], baseline: list[float]) -> dict[str, float]:
    """Mean of ``values - baseline`` (paired by seed) and its 95 % t-interval half-width."""
    diffs = [a - b for a, b in zip(values, baseline, strict=True)]
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return {"mean": mean, "ci95": math.nan}
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return {"mean": mean, "ci95": half}


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (regime, arm, head, calibrated): mean, std and paired differences vs ce."""
    groups: dict[tuple, dict[int, dict]] = {}
    for run in runs:
        key = (run["regime"], run["arm"], run["head"], run["calibrated"])
        groups.setdefault(key, {})[run["seed"]] = run
    table = []
    for (regime, arm, head, calibrated), by_seed in groups.items():
        row: dict[str, Any] = {"regime": regime, "arm": arm, "head": head}
        row |= {"calibrated": calibrated, "seeds": sorted(by_seed)}
        for metric in METRICS:
            values = [by_seed[s][metric] for s in sorted(by_seed)]
            row[metric] = {
                "mean": statistics.mean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values),
                "per_seed": values,
            }
        baseline = groups.get((regime, "ce", "plain", calibrated), {})
        paired = sorted(set(by_seed) & set(baseline))
        if arm != "ce" and paired:
            row["vs_ce_seeds"] = paired
            for metric in COMPARED:
                row[f"d_{metric}"] = paired_difference(
                    [by_seed[s][metric] for s in paired], [baseline[s][metric] for s in paired]
                )
        table.append(row)
    return table


def markdown(table: list[dict]) -> str:
    """The table as Markdown: mean ± std over seeds, and Δ vs ce with its 95 % CI."""
    lines = []
    for row in table:
        cells = {k: row[k] for k in ("regime", "arm", "head")}
        cells["T-scaled"] = "yes" if row["calibrated"] else "no"
        cells["T"] = f"{row['temperature']['mean']:.3f}" if row["calibrated"] else "1"
        for metric in COMPARED:
            cells[metric] = f"{row[metric]['mean']:.4f} ± {row[metric]['std']:.4f}"
            d = row.get(f"d_{metric}")
            cells[f"Δ{metric} vs ce"] = f"{d['mean']:+.4f} ± {d['ci95']:.4f}" if d else ""
        cells["H mean"] = f"{row['entropy_mean']['mean']:.3f}"
        cells["H min"] = f"{row['entropy_min']['min']:.3f}"
        lines.append(cells)
    columns = ["regime", "arm", "head", "T-scaled", "T"]
    columns += [c for m in COMPARED for c in (m, f"Δ{m} vs ce")] + ["H mean", "H min"]
    return markdown_table(lines, columns)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet_narrow")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--arms", nargs="+", default=ARMS, help="arm specs (see above)")
    parser.add_argument("--regimes", nargs="+", default=REGIMES, help="IMAGESxEPOCHS")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--holdout", type=float, default=0.05, help="calibration_holdout")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--warmup-epochs", type=float, default=0.5)
    parser.add_argument("--augment", default="none", choices=["none", "basic", "randaugment"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    parser.add_argument("--save-logits", action="store_true", help="keep test logits per run")
    parser.add_argument("--out", default="runs/bench_accuracy")
    parser.add_argument("--json", type=Path, default=RESULTS / "bench_accuracy.json")
    args = parser.parse_args()
    for arm in args.arms:
        parse_arm(arm)
    for regime in args.regimes:
        parse_regime(regime)
    if "ce" not in args.arms:
        parser.error("--arms must include ce, the baseline of the paired differences")

    grid = [(g, a, s) for g in args.regimes for s in args.seeds for a in args.arms]
    runs: list[dict] = []
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_one, args, *point) for point in grid]
        for future in futures:
            runs += future.result()
            table = summarise(runs)
            report = {"args": vars(args) | {"json": str(args.json)}, "runs": runs, "table": table}
            args.json.write_text(json.dumps(report, indent=2))
    print(f"{args.model} on {args.data}, regimes {args.regimes}, seeds {args.seeds}")
    print(markdown(table))


if __name__ == "__main__":
    main()
