"""Step-time overhead of the ERA head: forward + backward with and without it, alternated.

resnet18 on CIFAR-shaped input (32x32, CIFAR stem) and resnet50 on 224x224, same weights,
same batch; the two variants alternate within one loop so that drifting load (other jobs,
clocks) hits both alike. Reports the median step time of each and the relative overhead.
CPU defaults are small batches; on CUDA the steps run under bf16 autocast.

    python bench_overhead.py                     # auto device
    python bench_overhead.py --device cuda --reps 50
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from era_vision import get_model, with_era
from era_vision.plots import markdown_table

RESULTS = Path(__file__).parent / "results"


def step_time(model, inputs, labels, device) -> float:
    """Seconds for one forward + loss + backward (the loss is a sum without labels)."""
    if isinstance(model, torch.nn.Module):
        model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        out = model(inputs).float()
        loss = out.sum() if labels is None else F.cross_entropy(out, labels)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(name, size, classes, batch, args, device) -> dict:
    torch.manual_seed(0)
    base = get_model(name, classes, image_size=size).to(device, memory_format=torch.channels_last)
    era = with_era(base, args.min_entropy)  # shares base's weights
    images = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    labels = torch.randint(0, classes, (batch,), device=device)
    times: dict[str, list[float]] = {"plain": [], "era": []}
    for rep in range(args.warmup + args.reps):
        # Alternate which variant goes first, so neither always follows the other.
        order = ("plain", "era") if rep % 2 == 0 else ("era", "plain")
        for variant in order:
            t = step_time(base if variant == "plain" else era, images, labels, device)
            if rep >= args.warmup:
                times[variant].append(t)
    plain, with_head = statistics.median(times["plain"]), statistics.median(times["era"])
    # Each rep's two steps ran back to back, so their ratio cancels most of the load drift.
    paired = sorted(100 * (e / p - 1) for p, e in zip(times["plain"], times["era"]))
    low, high = _median_ci(paired)
    # The head alone on logits of the same shape: its cost does not drown in the backbone's
    # run-to-run noise, so head_% bounds the overhead even on a busy machine.
    logits = torch.randn(batch, classes, device=device, requires_grad=True)
    head = [step_time(era.era, logits, None, device) for _ in range(args.warmup + args.reps)]
    head_time = statistics.median(head[args.warmup :])
    return {
        "model": name,
        "input": f"{batch}x3x{size}x{size}",
        "classes": classes,
        "plain_ms": 1000 * plain,
        "era_ms": 1000 * with_head,
        "overhead_%": 100 * (with_head / plain - 1),
        "paired_%": statistics.median(paired),
        "paired_ci95_%": f"[{low:.2f}, {high:.2f}]",
        "head_ms": 1000 * head_time,
        "head_%": 100 * head_time / plain,
        "plain_ms_iqr": 1000 * _iqr(times["plain"]),
        "era_ms_iqr": 1000 * _iqr(times["era"]),
    }


def _median_ci(ordered: list[float]) -> tuple[float, float]:
    """Distribution-free 95 % confidence interval of the median (sign test, normal approximation)."""
    n = len(ordered)
    k = max(0, int(n / 2 - 1.96 * n**0.5 / 2))
    return ordered[k], ordered[n - 1 - k]


def _iqr(values: list[float]) -> float:
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--reps", type=int, default=None, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-resnet18", type=int, default=None)
    parser.add_argument("--batch-resnet50", type=int, default=None)
    parser.add_argument("--min-entropy", type=float, default=0.6)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is steadier on a busy box)"
    )
    parser.add_argument(
        "--json", type=Path, help="default: results/bench_overhead.json, -<device> off CPU"
    )
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.json is None:
        suffix = "" if args.device == "cpu" else f"-{args.device}"
        args.json = RESULTS / f"bench_overhead{suffix}.json"
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    args.reps = args.reps or (50 if cuda else 30)
    rows = [
        measure("resnet18", 32, 10, args.batch_resnet18 or (256 if cuda else 32), args, device),
        measure("resnet50", 224, 1000, args.batch_resnet50 or (64 if cuda else 4), args, device),
    ]
    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"ERA head overhead, fwd+bwd step, median of {args.reps} alternated reps on {name}")
    print(
        markdown_table(
            rows,
            [
                "model",
                "input",
                "plain_ms",
                "era_ms",
                "overhead_%",
                "paired_%",
                "paired_ci95_%",
                "plain_ms_iqr",
                "era_ms_iqr",
                "head_ms",
                "head_%",
            ],
            digits=2,
        )
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"device": name, "args": {**vars(args), "json": str(args.json)}, "rows": rows}, indent=2
        )
    )


if __name__ == "__main__":
    main()
