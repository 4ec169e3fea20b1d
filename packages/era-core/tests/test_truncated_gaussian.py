import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from era_core.entropy import TruncatedNormal
from era_core.functional import (
    gaussian_era,
    truncated_gaussian_era,
    truncated_normal_entropy_bounds,
)
from era_core.nn import TruncatedGaussianERA


def executed_entropy(loc, log_std):
    return TruncatedNormal(loc, log_std.exp(), -1.0, 1.0).entropy().sum(-1)


def test_bounds_are_centred_truncated_entropies_below_log2():
    h_min, h_max = truncated_normal_entropy_bounds(-8.0, 0.0)
    assert h_max == pytest.approx(0.68278593, abs=1e-7) and h_max < math.log(2)
    assert h_min == pytest.approx(-8.0 + 0.5 * math.log(2 * math.pi * math.e), abs=1e-9)
    with pytest.raises(ValueError, match="log_std_min"):
        truncated_normal_entropy_bounds(0.0, 0.0)


@settings(max_examples=40, deadline=None)
@given(
    dim=st.integers(1, 17),
    scale=st.floats(1e-3, 1e3),
    frac=st.floats(0.0, 0.999),
    seed=st.integers(0, 2**31),
)
def test_executed_entropy_is_the_target_for_any_loc(dim, scale, frac, seed):
    h_min, h_max = truncated_normal_entropy_bounds(-8.0, 0.0)
    target = dim * h_max - (1 - frac) * dim * 8.0
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randn(64, dim, generator=gen, dtype=torch.float64) * scale
    # Centres everywhere, including exactly on the boundary (tanh saturates to +-1).
    loc = torch.tanh(torch.randn(64, dim, generator=gen, dtype=torch.float64) * 10)
    loc[:4] = torch.tensor([1.0, -1.0, 0.0, 1.0 - 1e-12], dtype=torch.float64)[:, None]
    log_std = truncated_gaussian_era(loc, raw, target)
    entropy = executed_entropy(loc, log_std)
    unclipped = h_max + (target - dim * h_max) * raw.softmax(-1)
    exact_rows = (unclipped >= h_min).all(-1)
    torch.testing.assert_close(entropy[exact_rows], torch.full_like(entropy[exact_rows], target))
    assert (entropy >= target - 1e-9).all()
    assert (log_std >= -8.0 - 1e-9).all() and (log_std <= math.log(2) + 1e-9).all()


def test_float32_meets_the_floor_within_float32_rounding():
    gen = torch.Generator().manual_seed(0)
    loc = torch.tanh(torch.randn(4096, 6, generator=gen) * 5)
    raw = torch.randn(4096, 6, generator=gen) * 3
    for target in (-6.0, 1.5, 4.0):
        log_std = truncated_gaussian_era(loc, raw, target)
        assert log_std.dtype == torch.float32
        assert (executed_entropy(loc.double(), log_std.double()) >= target - 1e-5).all()


def test_tensor_target_broadcasts_per_member():
    loc = torch.tanh(torch.randn(3, 10, 4, dtype=torch.float64))
    raw = torch.randn(3, 10, 4, dtype=torch.float64)
    targets = torch.tensor([-4.0, 0.0, 2.5], dtype=torch.float64).view(3, 1)
    entropy = executed_entropy(loc, truncated_gaussian_era(loc, raw, targets))
    torch.testing.assert_close(entropy, targets.expand(3, 10))


def test_gradcheck_loc_raw_and_target():
    gen = torch.Generator().manual_seed(1)
    loc = torch.tanh(torch.randn(5, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    raw = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.tensor(-0.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda m, s, t: truncated_gaussian_era(m, s, t), (loc, raw, target)
    )


def test_gradient_keeps_entropy_constant_along_loc():
    # d/dloc of H(sigma(loc), loc) is 0: moving the centre changes sigma, not the entropy.
    loc = torch.tensor([[0.3, -0.9999, 0.0]], dtype=torch.float64, requires_grad=True)
    raw = torch.tensor([[0.1, 2.0, -1.0]], dtype=torch.float64)
    log_std = truncated_gaussian_era(loc, raw, -1.0)
    executed_entropy(loc, log_std).sum().backward()
    torch.testing.assert_close(loc.grad, torch.zeros_like(loc), atol=1e-8, rtol=0)


def test_refuses_infeasible_target_and_bad_loc():
    loc, raw = torch.zeros(2, 3), torch.zeros(2, 3)
    h_max = truncated_normal_entropy_bounds(-8.0, 0.0)[1]
    with pytest.raises(ValueError, match="target_entropy"):
        truncated_gaussian_era(loc, raw, 3 * h_max)
    with pytest.raises(ValueError, match="loc must lie in"):
        truncated_gaussian_era(loc + 1.5, raw, 0.0)
    with pytest.raises(ValueError, match="loc must lie in"):
        truncated_gaussian_era(torch.full((2, 3), math.nan), raw, 0.0)
    with pytest.raises(ValueError, match="loc must have shape"):
        truncated_gaussian_era(torch.zeros(2, 2), raw, 0.0)
    for target in (-math.inf, math.nan, torch.tensor([0.0, -math.inf])):
        with pytest.raises(ValueError, match="target_entropy"):
            truncated_gaussian_era(loc, raw, target)
    with pytest.raises(TypeError, match="raw_scale"):
        truncated_gaussian_era(loc, raw.long(), 0.0)


def test_half_precision_keeps_the_floor():
    # Computed in float64, returned in the input dtype rounded up: sigma only grows.
    generator = torch.Generator().manual_seed(0)
    loc = torch.rand(256, 3, generator=generator) * 2 - 1
    raw = torch.randn(256, 3, generator=generator).to(torch.bfloat16)
    exact = truncated_gaussian_era(loc.double(), raw.double(), -1.5)
    half = truncated_gaussian_era(loc, raw, -1.5)
    assert half.dtype == torch.bfloat16
    # Up to float32's rounding of the float64 root (the solver's output dtype).
    assert bool((half.double() >= exact - 1e-6).all())
    assert bool((half.double() > exact + 1e-6).any())  # rounding up happened


def test_module_matches_function_and_overrides_target():
    module = TruncatedGaussianERA(0.5, -6.0, 0.0)
    loc, raw = torch.tanh(torch.randn(8, 2)), torch.randn(8, 2)
    torch.testing.assert_close(module(loc, raw), truncated_gaussian_era(loc, raw, 0.5, -6.0, 0.0))
    torch.testing.assert_close(module(loc, raw, -1.0), truncated_gaussian_era(loc, raw, -1.0, -6.0))
    assert "target_entropy=0.5" in repr(module)


@pytest.mark.parametrize(("log_std_min", "log_std_max"), [(-8.0, 0.0), (-20.0, 2.0), (-3.0, 3.0)])
def test_fixed_step_device_path_matches_early_exit(monkeypatch, log_std_min, log_std_max):
    # Off CPU the solver runs a fixed number of steps (no host sync), fewer with log_std_max <= 0;
    # it must reach the same root, also where the entropy saturates at log 2 (log_std_max > 0).
    import era_core.functional as functional

    generator = torch.Generator().manual_seed(1)
    loc = torch.cat([torch.rand(500, 4, generator=generator) * 2 - 1, torch.ones(1, 4)])
    raw = torch.randn(501, 4, generator=generator) * 3
    _, h_max = truncated_normal_entropy_bounds(log_std_min, log_std_max)
    target = torch.linspace(-20.0, 4 * h_max - 1e-3, 501)
    bounds = (log_std_min, log_std_max)
    early = truncated_gaussian_era(loc, raw, target, *bounds)
    monkeypatch.setattr(functional, "checks_values", lambda tensor: False)
    fixed = truncated_gaussian_era(loc, raw, target, *bounds)
    torch.testing.assert_close(fixed, early, rtol=0, atol=1e-6)
    assert (executed_entropy(loc.double(), fixed.double()) >= target - 1e-5).all()


def test_half_precision_tensor_target_keeps_the_floor():
    # The budget (target - D h_max, here about -7) must not be rounded in the target's bf16.
    generator = torch.Generator().manual_seed(2)
    raw = torch.randn(64, 6, generator=generator).to(torch.bfloat16)
    loc = (torch.rand(64, 6, generator=generator) * 2 - 1).to(torch.bfloat16)
    target = torch.full((64,), -3.3).to(torch.bfloat16)
    exact = truncated_gaussian_era(loc.double(), raw.double(), target.double())
    half = truncated_gaussian_era(loc, raw, target)
    assert bool((half.double() >= exact - 1e-6).all())
    exact = gaussian_era(raw.double(), target.double() + 4.0)
    half = gaussian_era(raw, target + 4.0)
    assert bool((half.double() >= exact - 1e-6).all())
