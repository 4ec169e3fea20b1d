"""Forward+backward time of the ERA activations against their plain counterparts.

    python packages/era-core/benchmarks/bench_activations.py [--device cuda] [--compile]

Target (issue 2): softmax_era <= 3x log_softmax.
"""

import argparse

import torch
from _harness import default_device, print_table, time_alternating, write_json

from era_core.functional import gaussian_era, softmax_era

TARGET = 3.0


def fwd_bwd(fn, x):
    def run():
        x.grad = None
        fn(x).sum().backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd versions")
    parser.add_argument("--quick", action="store_true", help="small shapes only (smoke run)")
    args = parser.parse_args()
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32

    shapes = [(256, 1000)] if args.quick else [(256, 1000), (4096, 32000)]
    cases = []
    for shape in shapes:
        logits = (torch.randn(shape, device=args.device) * 4).to(dtype).requires_grad_(True)
        cases.append(
            (
                f"softmax_era {list(shape)} {str(dtype).removeprefix('torch.')}",
                logits,
                lambda z: torch.log_softmax(z, -1),
                lambda z: softmax_era(z, 0.6),
            )
        )
    raw = torch.randn(256, 61, device=args.device).requires_grad_(True)
    cases.append(
        (
            "gaussian_era [256, 61]",
            raw,
            lambda s: s.clamp(-8.0, 0.0),
            lambda s: gaussian_era(s, 0.25 * 61),
        )
    )

    rows, records = [], []
    for name, x, baseline, era in cases:
        fns = {"baseline": fwd_bwd(baseline, x), "era": fwd_bwd(era, x)}
        if args.compile:
            fns["era_compiled"] = fwd_bwd(torch.compile(era), x)
        repeats = (
            max(3, args.repeats // 4)
            if x.numel() > 10**7 and args.device == "cpu"
            else args.repeats
        )
        ms = time_alternating(fns, args.device, repeats)
        ratio = ms["era"] / ms["baseline"]
        row = [name, ms["baseline"], ms["era"], ratio]
        record = {"case": name, "baseline_ms": ms["baseline"], "era_ms": ms["era"], "ratio": ratio}
        if args.compile:
            row.append(ms["era_compiled"] / ms["baseline"])
            record["era_compiled_ms"] = ms["era_compiled"]
        rows.append(row)
        records.append(record)
    header = ["case (fwd+bwd)", "baseline ms", "era ms", "ratio"] + (
        ["compiled ratio"] if args.compile else []
    )
    print_table(
        f"ERA activations vs plain, {args.device}, target softmax ratio <= {TARGET}", header, rows
    )
    write_json("activations", args.device, records)


if __name__ == "__main__":
    main()
