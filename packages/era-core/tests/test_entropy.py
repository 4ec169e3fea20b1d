import math

import pytest
import torch

from era_core.entropy import (
    DeltaTuner,
    TruncatedNormal,
    categorical_entropy,
    gaussian_entropy,
    linear_logprobs_and_entropy,
    logprobs_and_entropy,
    tanh_gaussian_entropy,
    topk_logprobs,
)
from era_core.testing import cpu_and_cuda


def naive_logprobs_and_entropy(logits, labels):
    log_p = torch.log_softmax(logits.double(), -1)
    return log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1), -(log_p.exp() * log_p).sum(-1)


def test_gaussian_entropy_matches_torch():
    log_std = torch.randn(5, 3, dtype=torch.float64)
    expected = torch.distributions.Normal(torch.zeros(5, 3), log_std.exp()).entropy().sum(-1)
    torch.testing.assert_close(gaussian_entropy(log_std), expected.double())


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 100])
def test_categorical_entropy_matches_torch_and_masks(chunk_size):
    logits = torch.randn(4, 5, 9, dtype=torch.float64)
    logits[0, 0, 4:] = -math.inf
    expected = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(categorical_entropy(logits, chunk_size=chunk_size), expected)
    torch.testing.assert_close(
        categorical_entropy(logits.transpose(1, 2), dim=1, chunk_size=chunk_size), expected
    )


def test_categorical_entropy_gradient_is_finite_with_masked_classes():
    logits = torch.randn(3, 6, dtype=torch.float64)
    logits[:, 4:] = -math.inf
    logits.requires_grad_(True)
    for chunk in (None, 2):
        (grad,) = torch.autograd.grad(categorical_entropy(logits, chunk_size=chunk).sum(), logits)
        assert torch.isfinite(grad).all() and (grad[:, 4:] == 0).all()


@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
def test_logprobs_and_entropy_match_naive_with_gradients(chunk_size):
    logits = torch.randn(2, 5, 11, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (2, 5))
    logprobs, entropy = logprobs_and_entropy(logits, labels, chunk_size)
    ref_logprobs, ref_entropy = naive_logprobs_and_entropy(logits, labels)
    torch.testing.assert_close(logprobs, ref_logprobs)
    torch.testing.assert_close(entropy, ref_entropy)
    weights = torch.randn(2, 2, 5, dtype=torch.float64)
    grad = torch.autograd.grad((weights[0] * logprobs + weights[1] * entropy).sum(), logits)
    ref = torch.autograd.grad((weights[0] * ref_logprobs + weights[1] * ref_entropy).sum(), logits)
    torch.testing.assert_close(grad, ref)


def test_logprobs_and_entropy_gradcheck():
    logits = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 7, (6,))
    assert torch.autograd.gradcheck(lambda z: logprobs_and_entropy(z, labels, 4), (logits,))


def test_logprobs_and_entropy_low_precision_input_gives_float32():
    logits = torch.randn(8, 50).bfloat16()
    labels = torch.randint(0, 50, (8,))
    logprobs, entropy = logprobs_and_entropy(logits, labels, 3)
    assert logprobs.dtype == entropy.dtype == torch.float32
    ref_logprobs, ref_entropy = naive_logprobs_and_entropy(logits.float(), labels)
    torch.testing.assert_close(logprobs, ref_logprobs.float())
    torch.testing.assert_close(entropy, ref_entropy.float())


@pytest.mark.parametrize("with_scale", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 5, None])
def test_linear_logprobs_and_entropy_match_naive(with_scale, chunk_size):
    hidden = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(13, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 13, (3, 4))
    scale = torch.where(torch.rand(3, 4) < 0.5, 2.0, 0.5).double() if with_scale else None
    logprobs, entropy = linear_logprobs_and_entropy(hidden, weight, labels, chunk_size, scale)

    logits = hidden @ weight.T
    _, ref_entropy = naive_logprobs_and_entropy(logits, labels)
    scaled = logits * scale.unsqueeze(-1) if with_scale else logits
    ref_logprobs, _ = naive_logprobs_and_entropy(scaled, labels)
    torch.testing.assert_close(logprobs, ref_logprobs)
    torch.testing.assert_close(entropy, ref_entropy)

    w = torch.randn(2, 3, 4, dtype=torch.float64)
    grads = torch.autograd.grad((w[0] * logprobs + w[1] * entropy).sum(), (hidden, weight))
    refs = torch.autograd.grad((w[0] * ref_logprobs + w[1] * ref_entropy).sum(), (hidden, weight))
    for grad, ref in zip(grads, refs):
        torch.testing.assert_close(grad, ref)


@pytest.mark.parametrize("with_scale", [False, True])
@pytest.mark.parametrize("used", ["logprobs", "entropy"])
def test_gradient_of_one_output_alone(with_scale, used):
    # The unused output's gradient arrives as None and its terms are skipped.
    hidden = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(13, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 13, (7,))
    scale = torch.where(torch.rand(7) < 0.5, 2.0, 0.5).double() if with_scale else None
    pick = 0 if used == "logprobs" else 1
    got = linear_logprobs_and_entropy(hidden, weight, labels, 3, scale)[pick]
    logits = hidden @ weight.T
    scaled = logits * scale.unsqueeze(-1) if with_scale else logits
    want = (
        naive_logprobs_and_entropy(scaled, labels)[0],
        naive_logprobs_and_entropy(logits, labels)[1],
    )[pick]
    w = torch.randn(7, dtype=torch.float64)
    grads = torch.autograd.grad((w * got).sum(), (hidden, weight))
    refs = torch.autograd.grad((w * want).sum(), (hidden, weight))
    for grad, ref in zip(grads, refs):
        torch.testing.assert_close(grad, ref)
    z = torch.randn(7, 13, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad((w * logprobs_and_entropy(z, labels, 3)[pick]).sum(), z)
    (ref,) = torch.autograd.grad((w * naive_logprobs_and_entropy(z, labels)[pick]).sum(), z)
    torch.testing.assert_close(grad, ref)


def test_linear_logprobs_and_entropy_gradcheck():
    hidden = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 9, (5,))
    scale = torch.tensor([2.0, 1.0, 0.5, 2.0, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda h, w: linear_logprobs_and_entropy(h, w, labels, 2, scale), (hidden, weight)
    )


def test_linear_refuses_mismatched_width():
    with pytest.raises(ValueError, match="last dim"):
        linear_logprobs_and_entropy(
            torch.randn(2, 3), torch.randn(5, 4), torch.zeros(2, dtype=torch.long)
        )


def test_chunk_size_must_be_positive():
    with pytest.raises(ValueError, match="chunk_size"):
        logprobs_and_entropy(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), 0)


def test_topk_logprobs():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [3.0, 2.0, 1.0, 0.0]])
    labels = torch.tensor([1, 3])
    out = topk_logprobs(logits, labels, k=2)
    expected_in = 2.0 - torch.logsumexp(torch.tensor([3.0, 2.0]), 0)
    expected_out = 0.0 - torch.logsumexp(torch.tensor([3.0, 2.0, 0.0]), 0)
    torch.testing.assert_close(out, torch.stack([expected_in, expected_out]))
    full = topk_logprobs(logits, labels, k=4)
    torch.testing.assert_close(
        full, torch.log_softmax(logits, -1).gather(-1, labels[:, None]).squeeze(-1)
    )
    with pytest.raises(ValueError, match="k must be"):
        topk_logprobs(logits, labels, k=5)


def test_tanh_gaussian_entropy_estimate():
    # Small std at 0: tanh is nearly the identity, so the estimate is close to the Gaussian's.
    mean, log_std = (
        torch.zeros(2, 3, dtype=torch.float64),
        torch.full((2, 3), -6.0, dtype=torch.float64),
    )
    torch.testing.assert_close(
        tanh_gaussian_entropy(mean, log_std, 16), gaussian_entropy(log_std), atol=1e-4, rtol=0
    )
    # A saturated mean loses entropy: the squashed distribution is much narrower.
    far = tanh_gaussian_entropy(mean + 3.0, log_std, 16)
    assert (far < gaussian_entropy(log_std) - 3 * 4.0).all()
    # Against numerical integration of the density of y = tanh(u) for one dimension.
    m, s = 0.7, 0.8
    y = torch.linspace(-1 + 1e-9, 1 - 1e-9, 400_001, dtype=torch.float64)
    u = torch.atanh(y)
    density = torch.exp(torch.distributions.Normal(m, s).log_prob(u)) / (1 - y**2)
    integrand = torch.where(density > 0, -density * density.log(), 0.0)
    exact = torch.trapezoid(integrand, y)
    gen = torch.Generator().manual_seed(0)
    estimate = tanh_gaussian_entropy(
        torch.tensor([[m]], dtype=torch.float64),
        torch.tensor([[math.log(s)]], dtype=torch.float64),
        200_000,
        gen,
    )
    assert estimate.item() == pytest.approx(exact.item(), abs=5e-3)


@pytest.mark.parametrize(
    ("loc", "scale"), [(0.0, 0.5), (0.9, 0.3), (-0.99, 2.0), (1.0, 1e-3), (0.5, 0.05)]
)
def test_truncated_normal_density_entropy_mean_and_samples(loc, scale):
    dist = TruncatedNormal(
        torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64)
    )
    x = torch.linspace(-1, 1, 200_001, dtype=torch.float64)
    density = dist.log_prob(x).exp()
    assert torch.trapezoid(density, x).item() == pytest.approx(1.0, abs=1e-4)
    integrand = torch.where(density > 0, -density * density.clamp(min=1e-300).log(), 0.0)
    assert dist.entropy().item() == pytest.approx(torch.trapezoid(integrand, x).item(), abs=2e-3)
    assert dist.mean.item() == pytest.approx(torch.trapezoid(x * density, x).item(), abs=1e-4)
    samples = dist.rsample((100_000,))
    assert samples.min() >= -1 and samples.max() <= 1
    assert samples.mean().item() == pytest.approx(dist.mean.item(), abs=0.01)


@pytest.mark.parametrize(("loc", "scale"), [(0.3, 0.7), (-3.0, 0.5), (2.5, 0.4)])
def test_truncated_normal_icdf_inverts_the_cdf(loc, scale):
    # (-3, 0.5) and (2.5, 0.4) put [-1, 1] deep in a tail; the first is sampled mirrored.
    dist = TruncatedNormal(torch.tensor(loc, dtype=torch.float64), scale)
    u = torch.linspace(0.01, 0.99, 41, dtype=torch.float64)
    x = dist.icdf(u)
    assert (x.diff() > 0).all() and (x >= -1).all() and (x <= 1).all()
    bounds = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    phi = lambda v: torch.special.ndtr((v - loc) / scale)  # noqa: E731
    low, high = phi(bounds)
    cdf = (phi(x) - low) / (high - low)
    torch.testing.assert_close(cdf, u, atol=1e-6, rtol=0)


def test_truncated_normal_rsample_is_differentiable_and_outside_has_zero_density():
    loc = torch.tensor([0.2, -0.5], requires_grad=True)
    scale = torch.tensor([0.3, 0.1], requires_grad=True)
    dist = TruncatedNormal(loc, scale)
    (dist.rsample((64,)).sum() + dist.entropy().sum()).backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(scale.grad).all()
    assert torch.isneginf(
        TruncatedNormal(0.0, 1.0, validate_args=False).log_prob(torch.tensor(1.5))
    )
    with pytest.raises(ValueError, match="support"):
        TruncatedNormal(0.0, 1.0).log_prob(torch.tensor(1.5))
    with pytest.raises(ValueError, match="low"):
        TruncatedNormal(0.0, 1.0, low=1.0, high=1.0)


def test_delta_tuner_moves_against_the_entropy_gap_and_stays_non_negative():
    tuner = DeltaTuner(target_entropy=1.0, init_delta=0.5, learnable=True, batch_shape=(2,))
    optimiser = torch.optim.Adam(tuner.parameters(), lr=0.05)
    entropy = torch.tensor([[0.5, 0.6], [1.5, 1.4]])  # member 0 below target, member 1 above
    for _ in range(200):
        optimiser.zero_grad()
        tuner.loss(entropy).backward()
        optimiser.step()
    assert tuner.delta[0] > 0.5 and 0 <= tuner.delta[1] < 0.5
    torch.testing.assert_close(tuner.era_target, 1.0 + tuner.delta.detach())
    assert not tuner.era_target.requires_grad


def test_constant_delta_and_errors():
    tuner = DeltaTuner(target_entropy=2.0, init_delta=0.3)
    assert list(tuner.parameters()) == []
    assert tuner.era_target.item() == pytest.approx(2.3)
    assert tuner.state_dict()["constant_delta"].item() == pytest.approx(0.3)
    with pytest.raises(ValueError, match="init_delta"):
        DeltaTuner(1.0, init_delta=0.0, learnable=True)
    with pytest.raises(ValueError, match="init_delta"):
        DeltaTuner(1.0, init_delta=-0.1)
    with pytest.raises(ValueError, match=r"init_delta.*\[0, 0\.2\]"):
        DeltaTuner(1.0, init_delta=0.3, max_delta=0.2)
    with pytest.raises(ValueError, match="max_delta"):
        DeltaTuner(1.0, init_delta=0.0, max_delta=-0.1)


def test_delta_tuner_clamp_projects_a_learnt_delta_under_its_cap():
    tuner = DeltaTuner(1.0, init_delta=0.1, learnable=True, batch_shape=(2,), max_delta=0.2)
    optimizer = torch.optim.SGD(tuner.parameters(), lr=10.0)
    # Entropy far below target on member 0: delta grows past the cap, then is projected back.
    tuner.loss(torch.tensor([[-5.0], [1.0]])).backward()
    optimizer.step()
    assert tuner.delta[0] > 0.2
    tuner.clamp_()
    torch.testing.assert_close(tuner.delta, torch.tensor([0.2, 0.1]))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_truncated_normal_runs_on(device):
    dist = TruncatedNormal(torch.zeros(8, device=device), torch.full((8,), 0.5, device=device))
    sample = dist.rsample((4,))
    assert sample.device.type == device and torch.isfinite(dist.log_prob(sample)).all()


def test_topk_logprobs_mask_gives_outside_labels_minus_1e4_without_gradient():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [3.0, 2.0, 1.0, 0.0]], requires_grad=True)
    labels = torch.tensor([1, 3])
    out = topk_logprobs(logits, labels, k=2, outside="mask")
    expected_in = 2.0 - torch.logsumexp(torch.tensor([3.0, 2.0]), 0)
    torch.testing.assert_close(out, torch.stack([expected_in, torch.tensor(-1e4)]))
    out.sum().backward()
    assert torch.all(logits.grad[1] == 0) and logits.grad[0].abs().sum() > 0
    with pytest.raises(ValueError, match="outside must be"):
        topk_logprobs(logits, labels, k=2, outside="drop")
