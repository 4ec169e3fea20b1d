import pytest
import torch

from era_control.entropy_floor import delta_tuner
from era_control.ppo import PPOConfig


@pytest.mark.parametrize("bias", [0.3, 1.0, 2.5])
def test_delta_tuner_settles_within_1k_updates_at_the_default_rate(bias):
    """Where no closed form exists (PPO-ERA with tanh), delta must catch the bounding bias fast.

    Model of the executed entropy: the floor H0 + delta minus what the squash removes (``bias``),
    with per-state noise. After 1,000 Adam steps at PPO's default rate, the executed entropy
    must sit at H0 within 0.05 nats, for every seed.
    """
    lr = PPOConfig(env="Pendulum-v1").entropy_lr
    target, seeds = 0.75, 3
    tuner = delta_tuner(target, 3, 0.0, 0.1, True, seeds)
    opt = torch.optim.Adam(tuner.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(1_000):
        noise = 0.2 * torch.randn(seeds, 64, generator=gen)
        executed = target + tuner.delta.detach().unsqueeze(-1) - bias + noise
        opt.zero_grad()
        tuner.loss(executed).backward()
        opt.step()
        tuner.clamp_()
    torch.testing.assert_close(tuner.delta.detach(), torch.full((seeds,), bias), atol=0.05, rtol=0)
