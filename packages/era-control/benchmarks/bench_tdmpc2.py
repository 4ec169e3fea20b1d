"""TD-MPC2-ERA vs TD-MPC2: cost per env step and per update, and returns on one DMC task.

    python packages/era-control/benchmarks/bench_tdmpc2.py throughput [--model-size 1M] [--device cpu]
    python packages/era-control/benchmarks/bench_tdmpc2.py returns [--task dm_control/cartpole-swingup-v0] \\
        [--steps 100000] [--seeds 3] [--jobs 2]          # resumable; --report-only tabulates
    python packages/era-control/benchmarks/bench_tdmpc2.py throughput --model-size 5M --device cuda  # GPU

``throughput``: one seed, TD-MPC2's planner (horizon 3, 512 samples, 6 iterations, 64
elites, 24 prior trajectories), batch 256; times ``--repeats`` rounds of ``--calls`` plans
(``act``, what one env step costs the agent), ``--calls`` updates, and ``--calls`` env steps,
alternating the arms, and reports medians, env steps/s (one plan, one update and one env step
per step, TD-MPC2's ratio) and the ERA/baseline ratios. Writes
``results/tdmpc2_throughput[-<device>].json``.

``returns``: each arm is one ``era-control train tdmpc2`` run with all seeds in one process
(seed k initialises and feeds both arms alike); runs live outside the work tree in ``--runs``
(``$ERA_BENCH_RUNS`` or ``~/.cache/era-control/benchmarks``, under ``tdmpc2/``) and resume when
re-invoked. Reports the final deterministic (planning) return per seed, mean ± std, the paired
difference with its 95 % CI, and the prior's executed entropy beside the floor; writes
``results/tdmpc2_returns.json`` and ``results/tdmpc2_returns_<task>.png``.
"""

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _runs import (
    command,
    default_runs_root,
    eval_curves,
    paired_difference,
    run_all,
    run_dir,
    steps_done,
    write_json,
)

from era_control import envs, rng, tdmpc2
from era_control.buffers import SequenceReplayBuffer
from era_control.plot import plot_runs

RESULTS = Path(__file__).parent / "results"
ARMS = {"TD-MPC2-ERA": ["--era"], "TD-MPC2": ["--no-era"]}


def _agent(args: argparse.Namespace, era: bool) -> tuple[tdmpc2.TDMPC2, SequenceReplayBuffer]:
    """One seed's agent and a replay buffer of random transitions (whole episodes)."""
    device = torch.device(args.device)
    cfg = tdmpc2.TDMPC2Config(env=args.task, era=era, model_size=args.model_size, device=args.device, learning_starts=1000)  # fmt: skip
    obs_dim, action_dim = envs.env_dims(args.task)
    agent = tdmpc2.TDMPC2(cfg, rng.generators([0], device), obs_dim, action_dim, device)
    buffer = SequenceReplayBuffer(2000, 1, obs_dim, action_dim, cfg.horizon, device)
    data = np.random.default_rng(0)
    for t in range(2000):
        obs = data.normal(size=(1, obs_dim))
        buffer.add(obs, data.uniform(-1, 1, (1, action_dim)), data.normal(size=1), obs, np.zeros(1), np.array([t % 500 == 499]))  # fmt: skip
    return agent, buffer


def _seconds(fn, calls: int, device: str) -> float:
    """Wall seconds per call of ``fn`` over ``calls`` calls (after a synchronising warm-up)."""
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls


def throughput(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    agents = {arm: _agent(args, era) for arm, era in (("TD-MPC2-ERA", True), ("TD-MPC2", False))}
    env = envs.make_vector_env(args.task, 1)
    env.reset(seed=0)
    zero = np.zeros((1, env.single_action_space.shape[0]), dtype=np.float32)
    obs = torch.zeros(1, agents["TD-MPC2"][0].obs_dim, device=args.device)
    first = torch.zeros(1, dtype=torch.bool, device=args.device)
    runs: dict[str, dict[str, list[float]]] = {
        arm: {"act_ms": [], "update_ms": []} for arm in agents
    }
    env_ms = []
    for _ in range(args.repeats):  # alternate the arms, so that load changes hit both alike
        for arm, (agent, buffer) in agents.items():
            runs[arm]["act_ms"].append(
                1e3 * _seconds(lambda a=agent: a.act(obs, first), args.calls, args.device)
            )
            runs[arm]["update_ms"].append(1e3 * _seconds(lambda a=agent, b=buffer: a.learn(b), args.calls, args.device))  # fmt: skip
        env_ms.append(1e3 * _seconds(lambda: env.step(zero), args.calls * 10, "cpu"))
    env.close()
    env_step = statistics.median(env_ms)
    table = {}
    for arm, times in runs.items():
        act, update = statistics.median(times["act_ms"]), statistics.median(times["update_ms"])
        table[arm] = {"act_ms": act, "update_ms": update, "env_step_ms": env_step,
                      "env_steps_per_s": 1e3 / (act + update + env_step)}  # fmt: skip
    ratio = {k: table["TD-MPC2-ERA"][k] / table["TD-MPC2"][k] for k in ("act_ms", "update_ms")}
    ratio["per_env_step"] = (
        table["TD-MPC2"]["env_steps_per_s"] / table["TD-MPC2-ERA"]["env_steps_per_s"]
    )
    setup = {k: v for k, v in vars(args).items() if k != "func"} | {"torch": torch.__version__, "machine": platform.machine(), "params": sum(p.numel() for p in agents["TD-MPC2"][0].parameters())}  # fmt: skip
    suffix = "" if args.device == "cpu" else f"-{args.device.replace(':', '')}"
    write_json(RESULTS / f"tdmpc2_throughput{suffix}.json", {"setup": setup, "median": table, "ratio_era_over_plain": ratio, "runs": runs, "env_ms": env_ms})  # fmt: skip
    print(f"\n{args.task}, model {args.model_size} ({setup['params']:,} parameters), {args.device}, "
          f"{args.threads} thread(s), median of {args.repeats} x {args.calls} calls")  # fmt: skip
    print("| arm | plan (act) ms | update ms | env step ms | env steps/s |\n|---|---|---|---|---|")
    for arm, row in table.items():
        print(f"| {arm} | {row['act_ms']:.1f} | {row['update_ms']:.1f} | {row['env_step_ms']:.2f} | {row['env_steps_per_s']:.1f} |")  # fmt: skip
    print(f"ERA / plain: plan {ratio['act_ms']:.2f}x, update {ratio['update_ms']:.2f}x, per env step {ratio['per_env_step']:.2f}x")  # fmt: skip


def returns(args: argparse.Namespace) -> None:
    root = args.runs / "tdmpc2"
    runs = {arm: run_dir(root, args.task, arm, args.steps) for arm in ARMS}
    if not args.report_only:
        common = ["--env", args.task, "--seeds", str(args.seeds), "--model-size", args.model_size,
                  "--eval-every", str(args.eval_every), "--eval-episodes", str(args.eval_episodes),
                  "--checkpoint-every", "10000", "--device", args.device, "--threads", str(args.threads),
                  "--no-tensorboard"]  # fmt: skip
        jobs = {p: c for arm, p in runs.items() if (c := command("tdmpc2", p, args.steps, [*ARMS[arm], *common])) is not None}  # fmt: skip
        (root / "runs").mkdir(parents=True, exist_ok=True)
        run_all(jobs, args.jobs)
    rows = {}
    for arm, path in runs.items():
        steps, per_seed = eval_curves(path)
        if not steps:
            continue
        final = np.array(per_seed[-1])
        executed = eval_curves(path, "entropy/executed")[1]
        floor = eval_curves(path, "entropy/target")[1]
        rows[arm] = {"run": path.name, "step": steps[-1], "finished": steps_done(path) >= args.steps,
                     "returns": final.tolist(), "mean": float(final.mean()), "std": float(final.std()),
                     "curve_steps": steps, "curve_returns_per_seed": per_seed,
                     "executed_entropy": float(np.mean(executed[-1])) if executed else None,
                     "floor": float(np.mean(floor[-1])) if floor else None}  # fmt: skip
    era, plain = rows.get("TD-MPC2-ERA"), rows.get("TD-MPC2")
    if era and plain and era["step"] == plain["step"] and args.seeds > 1:
        era["minus_plain"] = paired_difference(era["returns"], plain["returns"])
    if rows:
        plot_runs([runs[a] for a in rows], RESULTS / f"tdmpc2_returns_{args.task.replace('/', '-')}.png",
                  labels=list(rows), title=f"{args.task}, {args.seeds} seeds (mean ± std)")  # fmt: skip
    setup = {k: v for k, v in vars(args).items() if k not in ("runs", "func")}
    write_json(RESULTS / "tdmpc2_returns.json", {"setup": setup, "results": rows})
    print(f"\n{args.task}: final deterministic (planning) return, {args.eval_episodes} episodes per seed [per seed]")  # fmt: skip
    print(
        "| arm | step | return | per seed | ERA minus TD-MPC2 (95 % CI) | prior's executed H (floor) |"
    )
    print("|---|---|---|---|---|---|")
    for arm, r in rows.items():
        d = r.get("minus_plain")
        diff = f"{d['mean']:+.0f} [{d['ci95_low']:+.0f}, {d['ci95_high']:+.0f}]" if d else ""
        h = "" if r["executed_entropy"] is None else f"{r['executed_entropy']:.2f}"
        floor = "" if r["floor"] is None else f" ({r['floor']:.2f})"
        step = f"{r['step']}" + ("" if r["finished"] else " (running)")
        print(f"| {arm} | {step} | {r['mean']:.0f} ± {r['std']:.0f} | {', '.join(f'{v:.0f}' for v in r['returns'])} | {diff} | {h}{floor} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True)
    for name, func in (("throughput", throughput), ("returns", returns)):
        p = sub.add_parser(name)
        p.set_defaults(func=func)
        p.add_argument("--task", default="dm_control/cartpole-swingup-v0")
        p.add_argument("--model-size", default="1M", choices=list(tdmpc2.MODEL_SIZES))
        p.add_argument("--device", default="cpu")
        p.add_argument("--threads", type=int, default=1, help="torch threads (per run)")
    tp = sub.choices["throughput"]
    tp.add_argument("--calls", type=int, default=20, help="timed calls per round")
    tp.add_argument("--repeats", type=int, default=5, help="rounds, alternating the arms")
    rp = sub.choices["returns"]
    rp.add_argument("--steps", type=int, default=100_000)
    rp.add_argument("--seeds", type=int, default=3)
    rp.add_argument("--eval-every", type=int, default=10_000)
    rp.add_argument("--eval-episodes", type=int, default=10)
    rp.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    rp.add_argument("--runs", type=Path, default=default_runs_root(), help="root of the run folders (outside the work tree)")  # fmt: skip
    rp.add_argument("--report-only", action="store_true", help="only tabulate what exists")
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
