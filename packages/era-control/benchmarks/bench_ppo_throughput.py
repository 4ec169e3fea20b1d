"""Env steps per second of our PPO and PPO-ERA vs Stable-Baselines3 PPO, with 1 and 8 envs.

    python packages/era-control/benchmarks/bench_ppo_throughput.py \
        [--env HalfCheetah-v5] [--envs 1 8] [--iterations 3] [--repeats 2] [--threads 1]

Identical settings for every implementation (CleanRL's and SB3's PPO defaults): 2048 env steps
per rollout (``num_steps = 2048 / envs``), 10 epochs of 32 minibatches (64 samples), separate
64-64 tanh actor and critic, observation and reward normalisation, clipped value loss,
synchronous vector envs, CPU, ``--threads`` torch threads. Each run does one untimed warm-up
iteration, then ``--iterations`` timed ones (rollout + update): ours is the trainer's loop body
(``RolloutCollector.collect`` + ``update``), SB3 is ``PPO.learn`` on ``DummyVecEnv`` +
``VecNormalize``. ``--seeds 1 5`` adds our 5-seed ensemble in one process (rates summed over
seeds: the gain over one seed per process is the ratio of the CPU rates). Two rates are
reported: env steps per second of wall time, and per second of
the process's CPU time. On a shared machine the wall rate mostly measures the other jobs; the
CPU rate is the work each implementation does (all runs are single-threaded). Runs alternate
between implementations ``--repeats`` times; the table shows the median run of each (repeats
of one setting still differ by up to 1.5x on a shared VM, so every run is listed too). Needs the
``bench`` extra. Writes ``results/ppo_throughput.json``.
"""

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _runs import write_json

from era_control import envs, ppo, rng
from era_control.logging import Logger

RESULTS = Path(__file__).parent / "results"
ROLLOUT = 2048


def ours(args: argparse.Namespace, num_envs: int, era: bool, seeds: int = 1) -> tuple[float, float]:
    """(wall, CPU) env steps per second of the timed iterations, summed over ``seeds`` seeds."""
    cfg = ppo.PPOConfig(
        env=args.env, era=era, num_envs=num_envs, num_steps=ROLLOUT // num_envs, seeds=seeds,
        threads=args.threads, device="cpu", tensorboard=False,
    )  # fmt: skip
    gens = rng.generators(range(seeds))
    agent = ppo.PPO(cfg, gens, *envs.env_dims(cfg.env), torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        logger = Logger(tmp, list(range(seeds)), tensorboard=False)
        collector = ppo.RolloutCollector(agent, cfg.env, logger, range(seeds * num_envs))
        ppo.update(agent, collector.collect(0), cfg.lr)  # warm-up
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(args.iterations):
            ppo.update(agent, collector.collect((i + 1) * ROLLOUT), cfg.lr)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        logger.close()
    collector.envs.close()
    steps = ROLLOUT * args.iterations * seeds
    return steps / wall, steps / cpu


def stable_baselines3(args: argparse.Namespace, num_envs: int) -> tuple[float, float]:
    """(wall, CPU) env steps per second of SB3's PPO over the timed iterations."""
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
    wall, cpu = time.perf_counter(), time.process_time()
    model.learn(ROLLOUT * args.iterations, reset_num_timesteps=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    venv.close()
    return ROLLOUT * args.iterations / wall, ROLLOUT * args.iterations / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 8], help="env counts")
    parser.add_argument("--iterations", type=int, default=3, help="timed rollouts of 2048 steps")
    parser.add_argument("--repeats", type=int, default=5, help="runs per setting (median shown)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-sb3", action="store_true")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[1],
        help="ours: seeds in one process (rates summed)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    runs: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.repeats):
        for n in args.envs:
            runs.setdefault(f"ours PPO, {n} envs", []).append(ours(args, n, False))
            if not args.skip_sb3:
                runs.setdefault(f"SB3 PPO, {n} envs", []).append(stable_baselines3(args, n))
            runs.setdefault(f"ours PPO-ERA, {n} envs", []).append(ours(args, n, True))
            for seeds in (k for k in args.seeds if k > 1):  # an ensemble in one process
                for era, name in ((False, "PPO"), (True, "PPO-ERA")):
                    runs.setdefault(f"ours {name}, {n} envs, {seeds} seeds", []).append(ours(args, n, era, seeds))  # fmt: skip
    median = {
        name: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
        for name, v in runs.items()
    }
    ratios = {}
    if not args.skip_sb3:
        for n in args.envs:
            sb3 = median[f"SB3 PPO, {n} envs"]
            for ours_name in (f"ours PPO, {n} envs", f"ours PPO-ERA, {n} envs"):
                mine = median[ours_name]
                ratios[f"{ours_name} / SB3"] = {"wall": mine[0] / sb3[0], "cpu": mine[1] / sb3[1]}

    print(
        f"\n{args.env}, 2048-step rollouts, 10 epochs x 32 minibatches, MLP 64-64 tanh, CPU, "
        f"{args.threads} thread(s), median of {args.repeats} x {args.iterations} timed iterations, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print("| implementation | env steps / CPU s | env steps / wall s | vs SB3 (CPU) | vs SB3 (wall) | all runs (CPU) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, (wall, cpu) in median.items():
        ratio = ratios.get(f"{name} / SB3")
        cells = [f"{ratio['cpu']:.2f}x", f"{ratio['wall']:.2f}x"] if ratio else ["", ""]
        every = ", ".join(f"{c:.0f}" for _, c in runs[name])
        print(f"| {name} | {cpu:.0f} | {wall:.0f} | {' | '.join(cells)} | {every} |")
    setup = {k: v for k, v in vars(args).items() if k != "out"} | {
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "load_average": os.getloadavg(),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "ppo_throughput.json",
               {"setup": setup, "median": median, "runs": runs, "ratios": ratios})  # fmt: skip


if __name__ == "__main__":
    main()
