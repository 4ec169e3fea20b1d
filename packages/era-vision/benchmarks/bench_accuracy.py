"""Accuracy and calibration of ce / label smoothing / confidence penalty / ERA, over seeds.

Default: a narrow ResNet on Fashion-MNIST (20k training images, 3 epochs, no augmentation),
3 seeds, sized to finish in about an hour on 2 CPU cores. The same table for a real setting:

    python bench_accuracy.py --model resnet18 --data cifar10:/data/cifar --epochs 200 \
        --train-subset 0 --augment basic --batch-size 128 --jobs 4

Runs live in --out and resume, so an interrupted table continues where it stopped; each
finished run is added to the JSON at once. Prints a Markdown table of mean ± std over seeds.
"""

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from era_vision.plots import markdown_table
from era_vision.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results"
METRICS = ["top1", "nll", "ece", "entropy_mean"]


def run_one(args: argparse.Namespace, regularizer: str, seed: int) -> dict:
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        model=args.model,
        data=args.data,
        out=str(Path(args.out) / f"{regularizer}-seed{seed}"),
        regularizer=regularizer,
        min_entropy=args.min_entropy,
        confidence_penalty=args.beta,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_epochs=args.warmup_epochs,
        augment=args.augment,
        train_subset=args.train_subset or None,
        device=args.device,
        workers=args.workers,
        seed=seed,
        eval_every=args.epochs,  # the table needs the final test metrics only
    )
    result = train(cfg)
    return {"regularizer": regularizer, "seed": seed, **result["metrics"]}


def summarise(runs: list[dict], regularizers: list[str]) -> list[dict]:
    rows = []
    for regularizer in regularizers:
        mine = [r for r in runs if r["regularizer"] == regularizer]
        if not mine:
            continue
        row = {"regularizer": regularizer, "seeds": len(mine)}
        for key in METRICS:
            values = [r[key] for r in mine]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            row[key] = f"{statistics.mean(values):.4f} ± {std:.4f}"
        row["entropy_min"] = f"{min(r['entropy_min'] for r in mine):.4f}"
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet_narrow")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--regularizers",
        nargs="+",
        default=["ce", "label-smoothing", "confidence-penalty", "era"],
    )
    parser.add_argument("--min-entropy", type=float, default=0.6, help="ERA H0")
    parser.add_argument("--beta", type=float, default=0.1, help="confidence-penalty beta")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--warmup-epochs", type=float, default=0.5)
    parser.add_argument("--augment", default="none", choices=["none", "basic", "randaugment"])
    parser.add_argument("--train-subset", type=int, default=20000, help="0: all images")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    parser.add_argument("--out", default="runs/bench_accuracy")
    parser.add_argument("--json", type=Path, default=RESULTS / "bench_accuracy.json")
    args = parser.parse_args()

    grid = [(r, s) for s in args.seeds for r in args.regularizers]
    runs: list[dict] = []
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_one, args, r, s) for r, s in grid]
        for future in futures:
            runs.append(future.result())
            rows = summarise(runs, args.regularizers)
            args.json.write_text(
                json.dumps(
                    {"args": vars(args) | {"json": str(args.json)}, "runs": runs, "table": rows},
                    indent=2,
                )
            )
    print(f"{args.model} on {args.data}, {args.epochs} epochs, seeds {args.seeds}")
    print(markdown_table(rows, ["regularizer", "seeds", *METRICS, "entropy_min"]))


if __name__ == "__main__":
    main()
