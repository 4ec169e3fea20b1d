"""PPO-ERA and PPO: the math (GAE, normalisers, entropy floor, per-seed clipping) and the CLI."""

import json
import math
import os
import signal
import sys

import numpy as np
import pytest
import torch
import yaml
from cli_asserts import same_agent

from era_control import checkpoint, ppo, rng
from era_control.cli import main
from era_control.distributions import normal_log_prob
from era_control.entropy_floor import UNIT_GAUSSIAN_ENTROPY
from era_control.logging import read_metrics
from era_control.normalize import RewardScaler, RunningMeanStd
from era_control.plot import run_label
from era_core.entropy import gaussian_entropy
from era_core.testing import cpu_and_cuda

# 2 envs x 32 steps = 64 samples per seed per rollout, 4 minibatches of 16, 2 epochs.
TINY = [
    "--num-envs", "2", "--num-steps", "32", "--num-minibatches", "4", "--update-epochs", "2",
    "--hidden", "16", "16", "--eval-episodes", "1", "--log-every", "64", "--no-tensorboard",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks: one thread is faster, and much faster on a busy machine (conftest restores)."""
    torch.set_num_threads(1)


def train(tmp_path, name, *flags):
    code = main(["train", "ppo", *TINY, "--out", str(tmp_path), "--run-name", name, *flags])
    return code, tmp_path / name


def metric_keys(run_dir):
    return {line.split(",")[2] for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]}


def agent(device="cpu", seeds=(0, 1, 2), obs_dim=5, action_dim=3, **overrides):
    cfg = ppo.PPOConfig(
        env="Pendulum-v1", steps=1024, seeds=len(seeds), hidden=(32, 32), num_envs=2,
        num_steps=32, num_minibatches=2, update_epochs=1, **overrides,
    )  # fmt: skip
    return ppo.PPO(cfg, rng.generators(seeds, device), obs_dim, action_dim, torch.device(device))


def random_rollout(a, size=64, scale=3.0):
    """A rollout as :func:`ppo.update` takes it, sampled from the agent at random states."""
    gen = torch.Generator(a.device).manual_seed(123)
    obs = scale * torch.randn(len(a.generators), size, a.obs_dim, generator=gen, device=a.device)
    with torch.no_grad():
        mean, log_std = a.policy(obs)
        u = mean + log_std.exp() * torch.randn(mean.shape, generator=gen, device=a.device)
        log_prob, value = normal_log_prob(u, mean, log_std), a.value(obs)
    advantage = torch.randn(value.shape, generator=gen, device=a.device)
    return ppo.Rollout(obs, u, log_prob, value, advantage, value + advantage)


# ---------------------------------------------------------------- GAE


def test_gae_lambda_one_is_the_bootstrapped_discounted_return():
    reward = torch.tensor([[1.0], [2.0], [3.0]])
    value = torch.tensor([[0.5], [-1.0], [2.0]])
    done = torch.zeros(3, 1)
    advantage, ret = ppo.gae(reward, value, done, torch.tensor([10.0]), gamma=0.9, lam=1.0)
    expected = torch.tensor([[1 + 0.9 * 2 + 0.81 * 3 + 0.729 * 10], [2 + 0.9 * 3 + 0.81 * 10], [3 + 0.9 * 10]])  # fmt: skip
    torch.testing.assert_close(ret, expected)
    torch.testing.assert_close(advantage, expected - value)


def test_gae_lambda_zero_is_the_td_error_and_done_cuts_bootstrapping():
    reward = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    value = torch.tensor([[0.5, 0.5], [3.0, 3.0]])
    done = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # env 0 ends at t=1, env 1 at t=0
    advantage, _ = ppo.gae(reward, value, done, torch.tensor([7.0, 7.0]), gamma=0.5, lam=0.0)
    expected = torch.tensor([[1 + 0.5 * 3 - 0.5, 1 - 0.5], [2 - 3.0, 2 + 0.5 * 7 - 3.0]])
    torch.testing.assert_close(advantage, expected)
    # With lambda > 0 nothing leaks across the episode boundary either.
    advantage, _ = ppo.gae(reward, value, done, torch.tensor([7.0, 7.0]), gamma=0.5, lam=0.8)
    torch.testing.assert_close(advantage[0, 1], torch.tensor(1 - 0.5))


# ---------------------------------------------------------------- normalisation


def test_running_mean_std_matches_the_whole_stream_per_member():
    stream = np.random.default_rng(0).normal(
        [[[1.0]], [[-5.0]]], [[[2.0]], [[0.1]]], size=(2, 300, 3)
    )
    rms = RunningMeanStd(2, (3,))
    for chunk in np.split(stream, [1, 50, 51, 300], axis=1):
        if chunk.shape[1]:
            rms.update(chunk)
    # Exactly the statistics of the stream merged with the prior (mean 0, var 1, count 1e-4).
    n, prior, mean, var = 300, 1e-4, stream.mean(1), stream.var(1)
    np.testing.assert_allclose(rms.mean.squeeze(1), n * mean / (n + prior), rtol=1e-10)
    expected_var = (prior + n * var + mean**2 * prior * n / (n + prior)) / (n + prior)
    np.testing.assert_allclose(rms.var.squeeze(1), expected_var, rtol=1e-10)
    x = stream.astype(np.float32)
    normalized = rms.normalize(x, clip=10.0)
    assert normalized.dtype == np.float32
    np.testing.assert_allclose(normalized.mean(1), 0.0, atol=1e-4)
    assert np.abs(rms.normalize(x * 1e6, clip=5.0)).max() == 5.0
    # The statistics are the module's buffers (what checkpoints store).
    assert rms.state_dict()["count"].item() == pytest.approx(300 + prior)


def test_reward_scaler_divides_by_the_std_of_the_discounted_return():
    scaler = RewardScaler(members=2, envs=1, gamma=0.5, clip=100.0)
    rewards = [1.0, 1.0, 1.0]
    returns = []
    g = 0.0
    for r in rewards:
        g = 0.5 * g + r
        returns.append(g)
        out = scaler(np.array([[r], [10 * r]]), np.array([[False], [False]]))
    # Member 0 saw returns 1, 1.5, 1.75 (member 1 ten times that): the same scaled reward.
    # The initial (0, 1) statistics carry a pseudo-count of 1e-4 only, hence rel=1e-3.
    assert out[0, 0].item() == pytest.approx(1.0 / math.sqrt(np.var(returns)), rel=1e-3)
    assert out[1, 0].item() == pytest.approx(out[0, 0].item(), rel=1e-3)
    # A finished episode resets its return.
    scaler(np.ones((2, 1)), np.array([[True], [False]]))
    assert scaler.returns[0, 0] == 0 and scaler.returns[1, 0] > 0


# ---------------------------------------------------------------- policy and update


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("level", ["state", "batch"])
@pytest.mark.parametrize("distribution", ["normal", "tanh_normal"])
def test_era_entropy_at_least_target_for_every_state(device, level, distribution):
    a = agent(device, era_level=level, distribution=distribution)
    assert a.target_entropy == pytest.approx(0.75)  # 0.25 nats per dim, as SAC-ERA
    gen = torch.Generator(device).manual_seed(0)
    obs = torch.cat([torch.randn(3, 500, 5, generator=gen, device=device),
                     100 * torch.randn(3, 500, 5, generator=gen, device=device)], 1)  # fmt: skip
    for _ in range(10):  # also after the updates have moved the networks and delta
        _, log_std = a.policy(obs)
        floor = (a.target_entropy + a.delta.delta).unsqueeze(-1)
        assert (gaussian_entropy(log_std) >= floor - 1e-4).all()
        assert (log_std >= a.cfg.log_std_min).all() and (log_std <= a.cfg.log_std_max).all()
        ppo.update(a, random_rollout(a), lr=1e-2)
    if level == "batch":  # one log-std per seed, whatever the state
        assert torch.equal(log_std, log_std[:, :1].expand_as(log_std))
    else:
        assert not torch.equal(log_std, log_std[:, :1].expand_as(log_std))


def test_tanh_normal_learns_delta_within_its_cap():
    a = agent(distribution="tanh_normal", entropy_lr=0.05)
    assert a.cfg.learn_delta and a.cfg.delta_init == 0.1
    before = a.delta.delta.clone()
    for _ in range(5):
        metrics = ppo.update(a, random_rollout(a), lr=1e-3)
    # tanh removes entropy, so the executed policy sits below H0 and delta grows.
    assert (metrics["entropy/policy"] < a.target_entropy).all()
    assert (a.delta.delta > before).all()
    max_entropy = 3 * (a.cfg.log_std_max + UNIT_GAUSSIAN_ENTROPY)
    assert (a.target_entropy + a.delta.delta < max_entropy).all()


def test_normal_era_keeps_a_fixed_zero_delta():
    a = agent()
    assert not a.cfg.learn_delta and a.delta_opt is None
    metrics = ppo.update(a, random_rollout(a), lr=1e-3)
    torch.testing.assert_close(metrics["era/delta"], torch.zeros(3))
    torch.testing.assert_close(metrics["entropy/gaussian"], torch.full((3,), 0.75))


def test_ppo_baseline_has_a_free_log_std_and_the_entropy_bonus_acts():
    a = agent(era=False, ent_coef=1.0, log_std_init=-0.5)
    assert not hasattr(a, "delta")
    torch.testing.assert_close(a.log_std_param, torch.full((3, 1, 3), -0.5))
    for _ in range(3):
        ppo.update(a, random_rollout(a), lr=1e-2)
    assert (a.log_std_param > -0.5).all()  # the bonus pushes the entropy up


def test_update_moves_actor_and_critic_of_every_seed():
    a = agent()
    before = {k: v.clone() for k, v in a.state_dict().items()}
    ppo.update(a, random_rollout(a), lr=1e-3)
    for key, value in a.state_dict().items():
        if key.startswith(("actor.", "critic.")) and key.endswith("weight"):
            assert all(not torch.equal(before[key][m], value[m]) for m in range(3)), key


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"num_minibatches": 3},
            r"num_minibatches must divide num_envs \* num_steps = 2048, got 3",
        ),
        (
            {"num_envs": 2, "num_steps": 5, "num_minibatches": 10},
            "norm_adv needs minibatches of >= 2",
        ),
        ({"ent_coef": 0.01}, "ent_coef must be 0 with ERA"),
        ({"target_entropy": 1.5}, "target_entropy must be in"),
        ({"target_entropy": 0.7, "distribution": "tanh_normal"}, "target_entropy must be in"),
        ({"gae_lambda": 1.5}, r"gae_lambda must be in \[0, 1\]"),
        ({"num_steps": 0}, "num_steps must be in"),
        ({"clip_coef": 0.0}, "clip_coef must be in"),
        ({"log_std_min": 0.0}, "log_std_min must be in"),
        ({"learn_delta": True, "delta_init": 0.0}, "delta_init must be in"),
    ],
)
def test_bad_config_is_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        ppo.PPOConfig(env="Pendulum-v1", **overrides)


def test_steps_must_be_whole_rollouts():
    # The default rollout is num_envs * num_steps = 1 * 2048: 512 steps used to run 2048.
    with pytest.raises(ValueError, match=r"^steps must be a positive multiple") as error:
        ppo.PPOConfig(env="Pendulum-v1", steps=512)
    assert str(error.value) == (
        "steps must be a positive multiple of the rollout size num_envs * num_steps = "
        "1 * 2048 = 2048, got 512; nearest valid: 2048"
    )
    with pytest.raises(ValueError, match=r"= 2 \* 32 = 64, got 100; nearest valid: 64 or 128$"):
        ppo.PPOConfig(env="Pendulum-v1", steps=100, num_envs=2, num_steps=32)
    assert ppo.PPOConfig(env="Pendulum-v1", steps=3 * 2048).steps == 3 * 2048
    assert ppo.PPOConfig(env="Pendulum-v1").steps % 2048 == 0  # the CLI's default


def test_every_field_has_help_and_the_baseline_accepts_an_entropy_bonus():
    import dataclasses

    assert all(f.metadata.get("help") for f in dataclasses.fields(ppo.PPOConfig))
    assert ppo.PPOConfig(env="Pendulum-v1", era=False, ent_coef=0.01).ent_coef == 0.01
    # Above the Gaussian's maximum is fine without ERA's floor (the target is not used).
    assert ppo.PPOConfig(env="Pendulum-v1", era=False, target_entropy=1.5).target_entropy == 1.5


def test_delta_above_feasible_maximum_is_refused():
    with pytest.raises(ValueError, match="delta_init must be in"):
        agent(delta_init=5.0)


# ---------------------------------------------------------------- CLI, resume


@pytest.mark.parametrize(
    "flags",
    [
        ["--era-level", "state"],
        ["--era-level", "batch"],
        ["--distribution", "tanh_normal"],
        ["--no-era", "--ent-coef", "0.01"],
    ],
)
def test_train_smoke(tmp_path, flags):
    code, run_dir = train(tmp_path, "run", "--env", "InvertedPendulum-v5", "--seeds", "2",
                          "--steps", "128", *flags)  # fmt: skip
    assert code == 0
    keys = metric_keys(run_dir)
    assert {"charts/episodic_return", "eval/return", "loss/policy", "loss/value",
            "entropy/gaussian", "ppo/approx_kl", "charts/sps"} <= keys  # fmt: skip
    era = "--no-era" not in flags
    assert ("era/delta" in keys) == ("entropy/target" in keys) == era
    if era:  # the states of the real rollouts kept the floor too (H0 = 0.25 nats, one action dim)
        rows = read_metrics(run_dir / "metrics.csv")
        assert all(v >= 0.25 - 1e-5 for _, _, k, v in rows if k == "entropy/gaussian")
        floor = [v for _, _, k, v in rows if k == "entropy/target"]
        assert min(floor) >= 0.25 - 1e-6  # H0 + delta, delta >= 0
    state = checkpoint.load(run_dir / "checkpoint.pt")
    assert state["step"] == 128 and state["iteration"] == 2
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["era"] == era and saved["seeds"] == 2
    assert yaml.safe_load((run_dir / "run.yaml").read_text())["algo"] == "ppo"
    assert run_label(run_dir) == ("PPO-ERA (2 seeds)" if era else "PPO (2 seeds)")


def test_cli_refuses_indivisible_minibatches(tmp_path, capsys):
    code = main(["train", "ppo", "--num-envs", "3", "--num-steps", "10", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert err == "error: num_minibatches must divide num_envs * num_steps = 30, got 32\n"
    assert not list(tmp_path.iterdir())  # nothing was started


def test_cli_refuses_steps_that_are_not_whole_rollouts(tmp_path, capsys):
    code = main(["train", "ppo", "--env", "Pendulum-v1", "--steps", "512", "--out", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err == (
        "error: steps must be a positive multiple of the rollout size num_envs * num_steps = "
        "1 * 2048 = 2048, got 512; nearest valid: 2048\n"
    )
    assert not list(tmp_path.iterdir())  # nothing was started


def test_eval_uses_the_saved_normalisation(tmp_path):
    _, run_dir = train(tmp_path, "run", "--env", "Pendulum-v1", "--steps", "64")
    assert main(["eval", str(run_dir), "--episodes", "1"]) == 0
    result = json.loads((run_dir / "eval.json").read_text())
    assert len(result["returns"]) == 1 and result["returns"][0] < 0  # Pendulum rewards are <= 0


class InterruptAfter(checkpoint.StopSignal):
    """Sends the process a real SIGINT when the training loop checks the flag for the n-th time."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.checks = checks

    @property
    def requested(self) -> bool:
        self.checks -= 1
        if self.checks == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return super().requested


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("flags", [["--era-level", "state", "--distribution", "tanh_normal"],
                                   ["--no-era"]])  # fmt: skip
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, flags):
    flags = ["--env", "Pendulum-v1", "--seeds", "2", "--steps", "256", "--checkpoint-every", "100",
             "--eval-every", "128", *flags]  # fmt: skip
    assert train(tmp_path, "full", *flags)[0] == 0

    # The flag is checked before each rollout of 64 steps: the 4th check stops at step 192,
    # after a periodic checkpoint at 128.
    monkeypatch.setattr(checkpoint, "StopSignal", lambda: InterruptAfter(checks=4))
    code, run_dir = train(tmp_path, "part", *flags)
    assert code == 130
    assert checkpoint.load(run_dir / "checkpoint.pt")["step"] == 192
    monkeypatch.undo()
    assert main(["train", "ppo", "--resume", str(run_dir)]) == 0

    _, resumed = same_agent(tmp_path / "full", run_dir, step=256)
    # The normalisation statistics are the whole run's: 2 envs x (reset + 128 steps) per seed.
    stats = resumed["agent"]
    assert stats["obs_rms.count"].item() == pytest.approx(2 * 129 + 1e-4)
    assert stats["reward_scaler.rms.count"].item() == pytest.approx(2 * 128 + 1e-4)
    assert (stats["obs_rms.var"] != 1.0).all() and stats["reward_scaler.returns"].abs().sum() > 0
    assert (run_dir / "metrics.csv").read_text().count("eval/return") == 2 * 2


@pytest.mark.parametrize("era", ["--era", "--no-era"])
def test_seed_trains_the_same_alone_or_in_an_ensemble(tmp_path, era):
    """Seed 1 of a 2-seed ensemble equals a 1-seed run of seed 1 (weights and statistics)."""
    flags = ["--env", "InvertedPendulum-v5", "--steps", "128", "--eval-every", "128", era]
    assert train(tmp_path, "two", *flags, "--seeds", "2")[0] == 0
    assert train(tmp_path, "one", *flags, "--seeds", "1", "--seed", "1")[0] == 0
    two = checkpoint.load(tmp_path / "two" / "checkpoint.pt")["agent"]
    one = checkpoint.load(tmp_path / "one" / "checkpoint.pt")["agent"]
    for key, value in one.items():
        if value.dim() == 0:  # shared sample counts
            torch.testing.assert_close(two[key], value, msg=key)
        else:
            torch.testing.assert_close(two[key][1:], value, msg=key)
    assert not torch.allclose(two["actor.0.weight"][0], two["actor.0.weight"][1])
