import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from era_core.entropy import gaussian_entropy
from era_core.functional import gaussian_era
from era_core.nn import GaussianERA

UNIT = 0.5 * math.log(2 * math.pi * math.e)


@settings(max_examples=200, deadline=None)
@given(
    dim=st.integers(1, 64),
    batch=st.integers(1, 8),
    scale=st.floats(1e-3, 1e3),
    frac=st.floats(0.0, 0.999),
    seed=st.integers(0, 2**31),
)
def test_entropy_is_exact_unclipped_and_higher_when_clipped(dim, batch, scale, frac, seed):
    log_std_min, log_std_max = -8.0, 0.0
    max_entropy = dim * (log_std_max + UNIT)
    # Targets from well below the clip region up to just under the maximum.
    target = max_entropy - (1 - frac) * dim * 12.0
    raw = (
        torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        * scale
    )
    log_std = gaussian_era(raw, target, log_std_min, log_std_max)
    entropy = gaussian_entropy(log_std)
    unclipped = log_std_max + (target - dim * (UNIT + log_std_max)) * raw.softmax(-1)
    exact_rows = (unclipped >= log_std_min).all(-1)
    torch.testing.assert_close(entropy[exact_rows], torch.full_like(entropy[exact_rows], target))
    assert (entropy >= target - 1e-9).all()
    assert (log_std >= log_std_min).all() and (log_std <= log_std_max).all()


def test_any_leading_shape_and_tensor_target():
    raw = torch.randn(3, 5, 7, 4, dtype=torch.float64)
    targets = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64).view(3, 1, 1)
    entropy = gaussian_entropy(gaussian_era(raw, targets))
    assert entropy.shape == (3, 5, 7)
    assert (entropy >= targets - 1e-9).all()


def test_gradcheck():
    raw = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: gaussian_era(s, 1.0, -8.0, 0.0), (raw,))


def test_gradients_finite_at_extreme_inputs():
    raw = torch.tensor([[1e4, -1e4, 0.0], [1e30, 1e30, -1e30]], requires_grad=True)
    gaussian_era(raw, 0.5).sum().backward()
    assert torch.isfinite(raw.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"target_entropy": 3 * UNIT + 1e-3}, "target_entropy"),
        ({"target_entropy": 0.0, "log_std_min": 0.0, "log_std_max": 0.0}, "log_std_min"),
        ({"target_entropy": 0.0, "log_std_min": 1.0, "log_std_max": 0.0}, "log_std_min"),
    ],
)
def test_infeasible_configuration_is_refused(kwargs, name):
    with pytest.raises(ValueError, match=name):
        gaussian_era(torch.zeros(2, 3), **kwargs)


def test_module_matches_function_and_accepts_shifted_target():
    module = GaussianERA(target_entropy=0.75, log_std_min=-5.0, log_std_max=0.5)
    raw = torch.randn(10, 3)
    torch.testing.assert_close(module(raw), gaussian_era(raw, 0.75, -5.0, 0.5))
    torch.testing.assert_close(module(raw, 1.25), gaussian_era(raw, 1.25, -5.0, 0.5))
    assert "target_entropy=0.75" in repr(module)
    with pytest.raises(ValueError, match="log_std_min"):
        GaussianERA(0.0, log_std_min=1.0, log_std_max=0.0)
