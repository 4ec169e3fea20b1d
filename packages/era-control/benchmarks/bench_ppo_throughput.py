"""Env-steps/s of our PPO and PPO-ERA vs Stable-Baselines3 PPO, with 1 and 8 envs.

    python packages/era-control/benchmarks/bench_ppo_throughput.py \
        [--env HalfCheetah-v5] [--envs 1 8] [--iterations 3] [--repeats 2] [--threads 1]

Identical settings for every implementation (CleanRL's and SB3's PPO defaults): 2048 env steps
per rollout (``num_steps = 2048 / envs``), 10 epochs of 32 minibatches (64 samples), separate
64-64 tanh actor and critic, observation and reward normalisation, clipped value loss,
synchronous vector envs, CPU, ``--threads`` torch threads. Each run does one untimed warm-up
iteration, then ``--iterations`` timed ones (rollout + update). Ours runs through the real
trainer and reads its own ``charts/sps``; SB3 runs ``PPO`` on ``DummyVecEnv`` + ``VecNormalize``.
Runs alternate between implementations ``--repeats`` times and the best of each is kept (the
machine may be shared). Needs the ``bench`` extra. Writes ``results/ppo_throughput.json``.
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from era_control import ppo
from era_control.logging import METRICS_FILE, read_metrics

RESULTS = Path(__file__).parent / "results"
ROLLOUT = 2048


def ours(args: argparse.Namespace, num_envs: int, era: bool, workdir: Path) -> float:
    """Env steps per second of the timed iterations, from the trainer's own log."""
    name = f"ours_{num_envs}_{era}_{time.monotonic_ns()}"
    cfg = ppo.PPOConfig(
        env=args.env, steps=ROLLOUT * (1 + args.iterations), era=era, num_envs=num_envs,
        num_steps=ROLLOUT // num_envs, threads=args.threads, device="cpu", eval_every=10**9,
        eval_episodes=1, log_every=ROLLOUT, checkpoint_every=10**9, tensorboard=False,
        out=str(workdir), run_name=name,
    )  # fmt: skip
    run_dir = workdir / name
    run_dir.mkdir()
    ppo.train(cfg, run_dir)
    # One row per iteration; total steps / total time is the harmonic mean of the rows.
    timed = [
        v
        for step, _, k, v in read_metrics(run_dir / METRICS_FILE)
        if k == "charts/sps" and step > ROLLOUT
    ]
    return len(timed) / sum(1.0 / v for v in timed)


def stable_baselines3(args: argparse.Namespace, num_envs: int) -> float:
    """Env steps per second of SB3's PPO over the timed iterations."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(make_vec_env(args.env, n_envs=num_envs, seed=0), gamma=0.99)
    model = PPO(
        "MlpPolicy", venv, n_steps=ROLLOUT // num_envs, batch_size=64, n_epochs=10,
        learning_rate=3e-4, gamma=0.99, gae_lambda=0.95, clip_range=0.2, ent_coef=0.0,
        vf_coef=0.5, max_grad_norm=0.5, device="cpu", seed=0, verbose=0,
    )  # fmt: skip
    model.learn(ROLLOUT)
    start = time.perf_counter()
    model.learn(ROLLOUT * args.iterations, reset_num_timesteps=False)
    return ROLLOUT * args.iterations / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 8], help="env counts")
    parser.add_argument("--iterations", type=int, default=3, help="timed rollouts of 2048 steps")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting, best kept")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-sb3", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for n in args.envs:
                runs.setdefault(f"ours PPO, {n} envs", []).append(ours(args, n, False, Path(tmp)))
                if not args.skip_sb3:
                    runs.setdefault(f"SB3 PPO, {n} envs", []).append(stable_baselines3(args, n))
                runs.setdefault(f"ours PPO-ERA, {n} envs", []).append(ours(args, n, True, Path(tmp)))  # fmt: skip
    sps = {name: max(values) for name, values in runs.items()}
    ratios = {}
    if not args.skip_sb3:
        for n in args.envs:
            ratios[f"ours PPO / SB3 PPO, {n} envs"] = sps[f"ours PPO, {n} envs"] / sps[f"SB3 PPO, {n} envs"]  # fmt: skip
            ratios[f"ours PPO-ERA / SB3 PPO, {n} envs"] = sps[f"ours PPO-ERA, {n} envs"] / sps[f"SB3 PPO, {n} envs"]  # fmt: skip

    print(
        f"\n{args.env}, 2048-step rollouts, 10 epochs x 32 minibatches, MLP 64-64 tanh, "
        f"CPU, {args.threads} thread(s), best of {args.repeats} x {args.iterations} timed iterations"
    )
    print("| implementation | env steps/s | all runs |\n|---|---|---|")
    for name, value in sps.items():
        print(f"| {name} | {value:.0f} | {', '.join(f'{v:.0f}' for v in runs[name])} |")
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}x")
    setup = {k: v for k, v in vars(args).items() if k != "out"} | {
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "load_average": os.getloadavg(),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ppo_throughput.json").write_text(
        json.dumps({"setup": setup, "sps": sps, "runs": runs, "ratios": ratios}, indent=2)
    )


if __name__ == "__main__":
    main()
