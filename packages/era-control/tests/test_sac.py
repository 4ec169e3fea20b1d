import math

import numpy as np
import pytest
import torch

from era_control import checkpoint, rng, sac
from era_control.buffers import ReplayBuffer
from era_control.cli import main
from era_core.testing import cpu_and_cuda


def agent(device="cpu", seeds=(0, 1, 2), obs_dim=5, action_dim=3, **overrides):
    cfg = sac.SACConfig(
        env="Pendulum-v1", steps=1000, seeds=len(seeds), hidden=(32, 32), **overrides
    )
    return sac.SAC(cfg, rng.generators(seeds, device), obs_dim, action_dim, torch.device(device))


def random_batch(agent_, seeds=3, batch=64, obs_dim=5, action_dim=3, device="cpu"):
    gen = np.random.default_rng(len(agent_.critic_opt.state))
    buffer = ReplayBuffer(batch, seeds, obs_dim, action_dim, device)
    for _ in range(batch):
        obs, next_obs = gen.normal(size=(2, seeds, obs_dim)) * 3
        action = gen.uniform(-1, 1, (seeds, action_dim))
        buffer.add(obs, action, gen.normal(size=seeds), next_obs, gen.random(seeds) < 0.1)
    return buffer.sample(batch, agent_.generators)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("distribution", ["tanh_normal", "truncated_normal"])
def test_era_entropy_at_least_target_for_every_state(device, distribution):
    a = agent(device, distribution=distribution, delta_init=0.3)
    target = a.target_entropy  # 0.25 nats per dim, the authors' default
    assert target == pytest.approx(0.75)
    obs = torch.cat(
        [torch.randn(3, 500, 5, device=device), 100 * torch.randn(3, 500, 5, device=device)], 1
    )
    for _ in range(30):  # also after training has moved the networks and delta
        pi = a.policy(obs)
        entropy = pi.gaussian_entropy()
        assert entropy.shape == (3, 1000)
        floor = (target + a.delta.delta).unsqueeze(-1)
        assert (entropy >= floor - 1e-4).all()
        assert (pi.log_std >= a.cfg.log_std_min).all() and (pi.log_std <= a.cfg.log_std_max).all()
        a.update(random_batch(a, device=device))


def test_era_delta_learns_and_stays_feasible():
    a = agent(delta_init=0.1, entropy_lr=0.5)
    max_entropy = 3 * (0.0 + 0.5 * math.log(2 * math.pi * math.e))
    deltas = []
    for _ in range(40):
        metrics = a.update(random_batch(a))
        deltas.append(metrics["era/delta"])
    assert not torch.allclose(deltas[0], deltas[-1])
    assert (a.delta.delta > 0).all() and (a.target_entropy + a.delta.delta < max_entropy).all()


def test_fixed_delta_stays_constant():
    a = agent(learn_delta=False, delta_init=0.2)
    for _ in range(3):
        metrics = a.update(random_batch(a))
    torch.testing.assert_close(metrics["era/delta"], torch.full((3,), 0.2))


def test_delta_above_feasible_maximum_is_refused():
    with pytest.raises(ValueError, match="delta_init must be in"):
        agent(delta_init=5.0)  # H0 = 0.75 plus 5 exceeds 3 * 1.419 nats


def test_sac_baseline_log_std_bounds_and_alpha():
    a = agent(era=False, log_std_min=-5.0, log_std_max=2.0)
    assert a.target_entropy == -3.0
    pi = a.policy(torch.randn(3, 200, 5) * 100)
    assert (pi.log_std >= -5).all() and (pi.log_std <= 2).all()
    metrics = a.update(random_batch(a))
    assert metrics["sac/alpha"].shape == (3,)
    assert not torch.equal(metrics["sac/alpha"], torch.ones(3))


def test_update_moves_each_network_and_targets_slowly():
    a = agent()
    before = {k: v.clone() for k, v in a.state_dict().items()}
    a.update(random_batch(a))
    after = a.state_dict()
    for key in before:
        if key.startswith(("actor.", "critic.")) and "weight" in key:
            assert not torch.equal(before[key], after[key]), key
    target_step = (
        (after["critic_target.net.0.weight"] - before["critic_target.net.0.weight"]).abs().max()
    )
    online_step = (after["critic.net.0.weight"] - before["critic.net.0.weight"]).abs().max()
    assert 0 < target_step < online_step


@pytest.mark.parametrize("era", ["--era", "--no-era"])
def test_seed_trains_the_same_alone_or_in_an_ensemble(tmp_path, era):
    """Seeds are independent: seed 0 of a 2-seed ensemble equals a 1-seed run of seed 0."""
    flags = ["train", "sac", "--env", "InvertedPendulum-v5", "--steps", "250", "--learning-starts", "100",
             "--hidden", "16", "16", "--batch-size", "32", "--eval-every", "250", "--eval-episodes", "1",
             "--no-tensorboard", "--out", str(tmp_path), era]  # fmt: skip
    assert main([*flags, "--seeds", "2", "--run-name", "two"]) == 0
    assert main([*flags, "--seeds", "1", "--run-name", "one"]) == 0
    two = checkpoint.load(tmp_path / "two" / "checkpoint.pt")["agent"]
    one = checkpoint.load(tmp_path / "one" / "checkpoint.pt")["agent"]
    for key, value in one.items():
        # Twin critics: members 0 and 1 of the critic ensembles belong to seed 0.
        first = 2 if key.startswith("critic") else 1
        torch.testing.assert_close(two[key][:first], value, msg=key)
    assert not torch.allclose(two["actor.0.weight"][0], two["actor.0.weight"][1])
