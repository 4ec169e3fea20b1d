import math

import pytest
import torch
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from era_control import rng
from era_control.distributions import TanhNormal, TruncatedTanhNormal
from era_core.entropy import TruncatedNormal


def test_tanh_normal_log_prob_matches_torch():
    mean, log_std = torch.randn(2, 64, 3), torch.rand(2, 64, 3) * 2 - 2
    sample = TanhNormal(mean, log_std).sample(rng.generators([0, 1]))
    reference = TransformedDistribution(Normal(mean, log_std.exp()), TanhTransform())
    # Away from |a| = 1, where torch's inverse tanh loses precision in float32.
    inner = sample.action.abs().amax(-1) < 0.99
    expected = reference.log_prob(sample.action.clamp(-0.999999, 0.999999)).sum(-1)
    torch.testing.assert_close(sample.log_prob[inner], expected[inner], rtol=1e-3, atol=1e-3)
    assert sample.action.abs().max() <= 1
    torch.testing.assert_close(sample.entropy, -sample.log_prob)


def test_truncated_sampling_follows_the_density():
    mean, log_std = torch.tensor([[[0.3, 2.5]]]), torch.tensor([[[-0.5, -1.0]]])
    dist = TruncatedTanhNormal(mean.expand(1, 20_000, 2), log_std.expand(1, 20_000, 2))
    sample = dist.sample(rng.generators([3]))
    assert sample.action.min() >= -1 and sample.action.max() <= 1
    reference = TruncatedNormal(torch.tanh(mean[0, 0]), log_std[0, 0].exp())
    torch.testing.assert_close(sample.action[0].mean(0), reference.mean, atol=0.02, rtol=0)
    # Closed-form entropy agrees with the sample average of -log p.
    assert sample.entropy[0, 0].item() == pytest.approx(-sample.log_prob[0].mean().item(), abs=0.03)


def test_samples_are_reparametrised():
    mean = torch.zeros(1, 8, 2, requires_grad=True)
    log_std = torch.full((1, 8, 2), -1.0, requires_grad=True)
    for cls in (TanhNormal, TruncatedTanhNormal):
        action = cls(mean, log_std).sample(rng.generators([0])).action
        grad_mean, grad_std = torch.autograd.grad(action.sum(), [mean, log_std])
        assert grad_mean.abs().sum() > 0 and grad_std.abs().sum() > 0


def test_mode_is_tanh_mean():
    mean, log_std = torch.randn(1, 4, 2), torch.zeros(1, 4, 2)
    for cls in (TanhNormal, TruncatedTanhNormal):
        torch.testing.assert_close(cls(mean, log_std).mode(), torch.tanh(mean))
    assert math.isclose(
        TanhNormal(mean, log_std).gaussian_entropy()[0, 0],
        2 * 0.5 * math.log(2 * math.pi * math.e),
        rel_tol=1e-6,
    )
