"""Env-steps/s of our SAC vs Stable-Baselines3 SAC, and N seeds in one process vs 1 seed.

    python packages/era-control/benchmarks/bench_throughput.py [--env Hopper-v5] [--threads 2]
    python packages/era-control/benchmarks/bench_throughput.py --device cuda --ensemble 8 32 \
        --skip-sb3                                  # the GPU runner's seed-scaling table

Same process, same settings for both: MLP 256-256, batch 256, one update per env step,
``--threads`` torch threads, ours on ``--device`` (SB3 always on CPU). Each measures
``--steps`` env steps after ``--warmup`` random steps (so the replay buffer holds data and
every timed step has an update). Ours is measured through the real trainer (``charts/sps`` over the timed window). Needs the
``bench`` extra (stable-baselines3). Writes ``results/throughput.json`` (on CPU) or
``results/throughput-<device>.json``.
"""

import argparse
import math
import platform
import tempfile
import time
from pathlib import Path

import torch
from _runs import write_json

from era_control import sac
from era_control.logging import METRICS_FILE, read_metrics

RESULTS = Path(__file__).parent / "results"


def ours(args: argparse.Namespace, seeds: int, era: bool, workdir: Path) -> float:
    """Env steps per second per seed of the timed window, from the trainer's own log."""
    name = f"ours_{seeds}_{era}"
    cfg = sac.SACConfig(
        env=args.env, steps=args.warmup + args.steps, seeds=seeds, era=era, learning_starts=args.warmup,
        hidden=(256, 256), batch_size=256, updates_per_step=1, threads=args.threads, device=args.device,
        eval_every=10**9, eval_episodes=1, log_every=math.gcd(args.warmup, args.steps), checkpoint_every=10**9,
        save_buffer=False, tensorboard=False, out=str(workdir), run_name=name,
    )  # fmt: skip
    run_dir = workdir / name
    run_dir.mkdir()
    sac.train(cfg, run_dir)
    # Each row covers log_every steps: total steps / total time is the harmonic mean.
    timed = [
        v
        for step, _, k, v in read_metrics(run_dir / METRICS_FILE)
        if k == "charts/sps" and step > args.warmup
    ]
    return len(timed) / sum(1.0 / v for v in timed)


def stable_baselines3(args: argparse.Namespace) -> float:
    """Env steps per second of SB3's SAC over the timed window."""
    import gymnasium as gym
    from stable_baselines3 import SAC

    model = SAC(
        "MlpPolicy", gym.make(args.env), policy_kwargs={"net_arch": [256, 256]}, batch_size=256,
        learning_starts=args.warmup, train_freq=1, gradient_steps=1, buffer_size=args.warmup + args.steps,
        device="cpu", seed=0, verbose=0,
    )  # fmt: skip
    model.learn(args.warmup)
    start = time.perf_counter()
    model.learn(args.steps, reset_num_timesteps=False)
    return args.steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--steps", type=int, default=2_000, help="timed env steps")
    parser.add_argument("--warmup", type=int, default=1_000, help="random steps before timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where our trainer runs (cpu, cuda)")
    parser.add_argument(
        "--ensemble", type=int, nargs="+", default=[5], help="seed counts of the multi-seed rows"
    )
    parser.add_argument("--skip-sb3", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sps = {
            "ours SAC-ERA, 1 seed": ours(args, 1, True, workdir),
            "ours SAC, 1 seed": ours(args, 1, False, workdir),
            **{
                f"ours SAC-ERA, {n} seeds (per seed)": ours(args, n, True, workdir)
                for n in args.ensemble
            },
        }
    if not args.skip_sb3:
        sps["SB3 SAC, 1 seed"] = stable_baselines3(args)
    one = sps["ours SAC-ERA, 1 seed"]
    ratios = {
        f"wall time of {n} seeds / 1 seed": one / sps[f"ours SAC-ERA, {n} seeds (per seed)"]
        for n in args.ensemble
    }
    if "SB3 SAC, 1 seed" in sps:
        ratios["ours SAC / SB3 SAC"] = sps["ours SAC, 1 seed"] / sps["SB3 SAC, 1 seed"]
        ratios["ours SAC-ERA / SB3 SAC"] = one / sps["SB3 SAC, 1 seed"]

    print(
        f"\n{args.env}, MLP 256-256, batch 256, UTD 1, {args.device}, {args.threads} threads, {args.steps} timed steps"
    )
    print("| implementation | env steps/s |\n|---|---|")
    for name, value in sps.items():
        print(f"| {name} | {value:.1f} |")
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}x")
    setup = {k: v for k, v in vars(args).items() if k != "out"} | {
        "torch": torch.__version__, "cpu_count": __import__("os").cpu_count(), "machine": platform.machine(),
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    name = "throughput.json" if args.device == "cpu" else f"throughput-{args.device}.json"
    write_json(args.out / name, {"setup": setup, "sps": sps, "ratios": ratios})


if __name__ == "__main__":
    main()
