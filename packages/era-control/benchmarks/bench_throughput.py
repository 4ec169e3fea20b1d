"""Env-steps/s of our SAC vs Stable-Baselines3 SAC, and N seeds in one process vs 1 seed.

    python packages/era-control/benchmarks/bench_throughput.py [--env Hopper-v5] [--threads 2]
    python packages/era-control/benchmarks/bench_throughput.py --device cuda --ensemble 8 32 \
        --skip-sb3                                  # the GPU runner's seed-scaling table

Same process, same settings for both: MLP 256-256, batch 256, one update per env step,
``--threads`` torch threads, ours on ``--device`` (SB3 always on CPU). Each measures
``--steps`` env steps after ``--warmup`` random steps (so the replay buffer holds data and
every timed step has an update). Ours is measured through the real trainer (``charts/sps`` over
the timed window). Beside each of our one-seed rows stands its FLOP floor: the matrix-product
FLOPs of one env step's compute (``act`` plus one update, counted by torch's
``FlopCounterMode``) at the speed this process measures for the update's dominant product
(``(seeds, 256, 256) @ (seeds, 256, 256)``, float32, on ``--device``). Needs the ``bench``
extra (stable-baselines3). Writes ``results/throughput.json`` (on CPU) or
``results/throughput-<device>.json``.
"""

import argparse
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _runs import write_json
from torch.utils.flop_counter import FlopCounterMode

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


def step_flops(args: argparse.Namespace, era: bool) -> int:
    """Matrix-product FLOPs of one env step of one seed: ``act`` plus one update."""
    import gymnasium as gym

    from era_control import rng
    from era_control.buffers import ReplayBuffer

    space = gym.make(args.env)
    obs_dim, action_dim = space.observation_space.shape[0], space.action_space.shape[0]
    device = torch.device(args.device)
    cfg = sac.SACConfig(
        env=args.env, era=era, hidden=(256, 256), batch_size=256, device=args.device
    )
    agent = sac.SAC(cfg, rng.generators([0], device), obs_dim, action_dim, device)
    data, buffer = np.random.default_rng(0), ReplayBuffer(512, 1, obs_dim, action_dim, device)
    for _ in range(512):
        obs, next_obs = data.normal(size=(2, 1, obs_dim))
        buffer.add(
            obs, data.uniform(-1, 1, (1, action_dim)), data.normal(size=1), next_obs, np.zeros(1)
        )
    batch = buffer.sample(256, agent.generators)
    with FlopCounterMode(display=False) as counter:
        agent.act(batch.obs[:, 0])
        agent.update(batch)
    return counter.get_total_flops()


def matmul_flops_per_second(device: str, repeats: int = 200) -> float:
    """Float32 FLOP/s of the update's dominant product, ``(1, 256, 256) @ (1, 256, 256)``."""
    a, b = (torch.randn(1, 256, 256, device=device) for _ in range(2))
    for _ in range(20):
        torch.bmm(a, b)
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        torch.bmm(a, b)
    sync()
    return repeats * 2 * 256**3 / (time.perf_counter() - start)


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

    rate = matmul_flops_per_second(args.device)
    floors = {}
    for name, era in (("ours SAC-ERA, 1 seed", True), ("ours SAC, 1 seed", False)):
        flops = step_flops(args, era)
        floors[name] = {"mflop": flops / 1e6, "floor_ms": 1e3 * flops / rate,
                        "ms": 1e3 / sps[name], "vs_floor": rate / flops / sps[name]}  # fmt: skip
    print(
        f"\n{args.env}, MLP 256-256, batch 256, UTD 1, {args.device}, {args.threads} threads, {args.steps} timed steps"
    )
    print(f"matrix products at {rate / 1e9:.1f} GFLOP/s (256x256x256, float32)")
    print(
        "| implementation | env steps/s | ms per step | MFLOP per step | FLOP floor ms | vs floor |"
    )
    print("|---|---|---|---|---|---|")
    for name, value in sps.items():
        floor = floors.get(name)
        extra = (
            f"{floor['ms']:.2f} | {floor['mflop']:.1f} | {floor['floor_ms']:.2f} | {floor['vs_floor']:.2f}x"
            if floor else f"{1e3 / value:.2f} | | |"
        )  # fmt: skip
        print(f"| {name} | {value:.1f} | {extra} |")
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}x")
    setup = {k: v for k, v in vars(args).items() if k != "out"} | {
        "torch": torch.__version__, "cpu_count": __import__("os").cpu_count(), "machine": platform.machine(),
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    name = "throughput.json" if args.device == "cpu" else f"throughput-{args.device}.json"
    write_json(
        args.out / name,
        {
            "setup": setup,
            "sps": sps,
            "ratios": ratios,
            "matmul_gflops": rate / 1e9,
            "flop_floor": floors,
        },
    )


if __name__ == "__main__":
    main()
