import math
import warnings

import numpy as np
import pytest
import torch

from era_control import checkpoint, rng, sac
from era_control.buffers import ReplayBuffer
from era_control.cli import main
from era_control.distributions import TruncatedTanhNormal
from era_core.testing import cpu_and_cuda


def agent(device="cpu", seeds=(0, 1, 2), obs_dim=5, action_dim=3, **overrides):
    cfg = sac.SACConfig(
        env="Pendulum-v1", steps=10_000, seeds=len(seeds), hidden=(32, 32), **overrides
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
@pytest.mark.parametrize("target", [None, 0.25, -0.5])
def test_era_executed_entropy_at_least_target_for_every_state(device, target):
    a = agent(device, target_entropy=target)
    per_dim = -1.0 if target is None else target  # SAC's target is SAC-ERA's default
    assert a.target_entropy == pytest.approx(3 * per_dim)
    obs = torch.cat(
        [torch.randn(3, 500, 5, device=device), 100 * torch.randn(3, 500, 5, device=device)], 1
    )
    for _ in range(30):  # also after training has moved the networks
        pi = a.policy(obs)
        assert isinstance(pi, TruncatedTanhNormal)
        entropy = pi.dist.entropy().sum(-1)  # closed form, of the distribution that acts
        assert entropy.shape == (3, 1000)
        assert (entropy >= a.target_entropy - 1e-4).all()
        a.update(random_batch(a, device=device))


def test_era_refuses_tanh_normal_and_unreachable_targets():
    with pytest.raises(ValueError, match="tanh_normal"):
        agent(distribution="tanh_normal")
    with pytest.raises(ValueError, match="target_entropy must be in"):
        agent(target_entropy=0.69)  # above the truncated normal's 0.683 at log_std_max=0
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError, match="target_entropy must be in"):
            agent(target_entropy=bad)


def test_defaults_pick_the_distribution_per_algorithm():
    assert agent().cfg.distribution == "truncated_normal"
    assert agent(era=False).cfg.distribution == "tanh_normal"
    assert agent(era=False, distribution="truncated_normal").cfg.distribution == "truncated_normal"


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


def test_authors_floor_bounds_the_gaussian_and_truncation_lowers_what_acts():
    a = agent(target_entropy=0.25, floor="authors")
    obs = torch.cat([torch.randn(3, 200, 5), 100 * torch.randn(3, 200, 5)], 1)
    pi = a.policy(obs)
    assert (pi.log_std <= 0.0).all() and (pi.log_std >= -8.0).all()
    # The Gaussian before truncation is floored (the clip at -8 can only raise it) ...
    assert (pi.gaussian_entropy() >= a.target_entropy - 1e-4).all()
    # ... but what acts is lower wherever the mode sits off-centre, unlike the executed floor.
    executed = pi.dist.entropy().sum(-1)
    assert (executed <= pi.gaussian_entropy() + 1e-5).all()
    assert executed.min() < a.target_entropy - 0.1
    exact = agent(target_entropy=0.25).policy(obs).dist.entropy().sum(-1)
    assert exact.min() >= a.target_entropy - 1e-4


def test_update_logs_executed_entropy_and_saturation():
    a = agent(target_entropy=0.25, floor="authors")
    metrics = a.update(random_batch(a))
    assert metrics["entropy/executed_min"].shape == (3,)
    assert (metrics["entropy/executed_min"] <= metrics["entropy/executed"]).all()
    mean = torch.tensor([[[0.0, 3.0], [-3.0, 0.1]]])  # |tanh| = 0, 0.995, 0.995, 0.1
    assert sac.saturated_fraction(mean).tolist() == [0.5]
    assert ((metrics["action/saturated"] >= 0) & (metrics["action/saturated"] <= 1)).all()


@pytest.mark.gpu
@pytest.mark.parametrize("era", [True, False])
def test_update_and_act_do_not_wait_for_the_device(era):
    # A GPU-shaped step queues its kernels and returns: no call in update or act may make the
    # host wait for the device (an .item(), a boolean mask, a value check).
    a = agent("cuda", era=era)
    batch = random_batch(a, device="cuda")
    obs = torch.randn(3, 5, device="cuda")
    a.update(batch)  # first calls: lazy CUDA and optimiser state
    a.act(obs)
    torch.cuda.synchronize()
    with warnings.catch_warnings():
        # torch 2.11 announces, once per process, that the mode is a prototype.
        warnings.filterwarnings("ignore", "Synchronization debug mode is a prototype")
        torch.cuda.set_sync_debug_mode("error")
    try:
        a.update(batch)
        a.act(obs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
