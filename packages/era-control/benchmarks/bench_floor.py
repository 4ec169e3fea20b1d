"""Does the floor hold on the distribution that acts? Min executed entropy over a replay batch.

    python packages/era-control/benchmarks/bench_floor.py --targets -1 -0.5 0.25

Trains SAC-ERA briefly on Hopper-v5 (small nets, a few thousand updates: the old tanh default
collapses within 1.5k), then evaluates the entropy of the policy that acts in every state
of a replay batch: closed form for the truncated normal, Monte Carlo (512 samples per state)
for a tanh-squashed Gaussian. Uses only APIs that also exist before the truncated default,
so the old default's row is measured by running this file against that commit's sources
(``PYTHONPATH=<old>/packages/era-control/src:<old>/packages/era-core/src``). Rows are
merged into ``results/floor.json`` keyed by code version, distribution and target.
"""

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import torch
from _runs import write_json

from era_control import checkpoint, sac
from era_control.buffers import ReplayBuffer
from era_control.distributions import TruncatedTanhNormal
from era_core.entropy import tanh_gaussian_entropy

RESULTS = Path(__file__).parent / "results"


def executed_entropy(pi) -> torch.Tensor:
    """Entropy of the acting distribution per state (closed form, or 512-sample Monte Carlo)."""
    if isinstance(pi, TruncatedTanhNormal):
        return pi.dist.entropy().sum(-1)
    return tanh_gaussian_entropy(pi.mean, pi.log_std, 512, torch.Generator().manual_seed(0))


def measure(
    env: str, target: float, updates: int, seeds: int, batch: int, distribution: str | None
) -> dict:
    """Train, then the min and mean executed entropy over ``batch`` replayed states per seed."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = sac.SACConfig(
            env=env, steps=500 + updates, learning_starts=500, seeds=seeds, hidden=(64, 64),
            batch_size=64, eval_every=10**7, eval_episodes=1, log_every=10**7, out=tmp,
            tensorboard=False, device="cpu", target_entropy=target,
            **({"distribution": distribution} if distribution else {}),
        )  # fmt: skip
        assert sac.train(cfg, tmp) == 0
        state = checkpoint.load(Path(tmp) / "checkpoint.pt")
    agent, envs_, gens = sac.build(cfg, torch.device("cpu"))
    obs_dim = int(envs_.single_observation_space.shape[0])
    action_dim = int(envs_.single_action_space.shape[0])
    envs_.close()
    agent.load_state_dict(state["agent"])
    buffer = ReplayBuffer(cfg.steps, seeds, obs_dim, action_dim, "cpu")
    buffer.load_state_dict(state["buffer"])
    with torch.no_grad():
        entropy = executed_entropy(agent.policy(buffer.sample(batch, gens).obs))
    return {"distribution": cfg.distribution, "target_per_dim": target,
            "floor": agent.target_entropy, "min_executed": float(entropy.min()),
            "mean_executed": float(entropy.mean()), "states": entropy.numel(),
            "updates": updates, "env": env}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--targets", nargs="+", type=float, default=[-1.0, -0.5, 0.25])
    parser.add_argument("--updates", type=int, default=2_500)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1_000, help="replayed states per seed")
    parser.add_argument("--out", type=Path, default=RESULTS / "floor.json")
    parser.add_argument("--distribution", help="SAC-ERA's distribution (default: the code's)")
    parser.add_argument("--code", help="label of the code version (default: git commit)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    here = Path(sac.__file__).parent
    commit = args.code or subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or str(here)  # fmt: skip
    rows = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    for target in args.targets:
        row = measure(args.env, target, args.updates, args.seeds, args.batch, args.distribution) | {
            "code": commit
        }
        keep = ("code", "distribution", "target_per_dim")
        rows = [r for r in rows if any(r[k] != row[k] for k in keep)] + [row]
        print(row, flush=True)
    write_json(args.out, {"rows": rows})
    print("\n| code | distribution | target/dim | floor | min executed | mean executed | states |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ok = "" if r["min_executed"] >= r["floor"] - 1e-3 else " (below floor)"
        print(f"| {r['code']} | {r['distribution']} | {r['target_per_dim']:g} | {r['floor']:.2f} | "
              f"{r['min_executed']:.3f}{ok} | {r['mean_executed']:.3f} | {r['states']} |")  # fmt: skip


if __name__ == "__main__":
    main()
