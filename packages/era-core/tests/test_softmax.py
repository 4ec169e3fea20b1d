import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from era_core.entropy import categorical_entropy
from era_core.functional import h_inverse, softmax_era, softmax_era_bounds, tight_constant
from era_core.nn import SoftmaxERA
from era_core.testing import requires_torch

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def entropy64(logits: torch.Tensor) -> torch.Tensor:
    return categorical_entropy(logits.double())


def feasible_entropy(num_classes, frac, calibration="paper", tau=4.0):
    low, high = softmax_era_bounds(num_classes, tau, calibration)
    return low + frac * (high - low)


@settings(max_examples=150, deadline=None)
@given(
    num_classes=st.one_of(st.integers(2, 64), st.integers(2, 50_000)),
    log_scale=st.floats(-3, 4),
    frac=st.floats(0.0, 0.999),
    dtype=st.sampled_from(list(DTYPES)),
    calibration=st.sampled_from(["paper", "tight"]),
    peaked=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_entropy_floor_holds(num_classes, log_scale, frac, dtype, calibration, peaked, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, num_classes, generator=gen) * 10**log_scale
    if peaked:  # the worst case: one class far ahead of the others
        logits[:, 0] += 10**log_scale * 10
    min_entropy = feasible_entropy(num_classes, frac, calibration)
    out = softmax_era(logits.to(DTYPES[dtype]), min_entropy, calibration=calibration)
    assert out.dtype == DTYPES[dtype]
    assert torch.isfinite(out).all()
    # "tight" has no slack, so bfloat16's rounding of the returned logits shows (documented).
    tolerance = 0.1 if (calibration, dtype) == ("tight", "bfloat16") else 1e-4
    assert (entropy64(out) >= min_entropy - tolerance).all()


@pytest.mark.parametrize("num_classes", [2, 3, 10, 1000, 50_000])
@pytest.mark.parametrize("min_entropy_frac", [0.05, 0.3, 0.6, 0.95])
def test_tight_calibration_reaches_the_floor_in_the_one_hot_limit(num_classes, min_entropy_frac):
    min_entropy = min_entropy_frac * math.log(num_classes)
    logits = torch.full((1, num_classes), -200.0, dtype=torch.float64)
    logits[0, 0] = 200.0
    tight = entropy64(softmax_era(logits, min_entropy, calibration="tight"))
    assert tight.item() == pytest.approx(min_entropy, abs=1e-4)


@pytest.mark.parametrize(("num_classes", "expected"), [(1000, 1.115), (10, 0.970)])
def test_paper_calibration_realised_minimum_matches_method(num_classes, expected):
    # method.md: with the exact h^-1, D=1000 and D=10 at H0=0.6 give these worst cases.
    logits = torch.full((1, num_classes), -200.0, dtype=torch.float64)
    logits[0, 0] = 200.0
    assert entropy64(softmax_era(logits, 0.6)).item() == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("calibration", ["paper", "tight"])
def test_argmax_and_class_order_preserved(calibration):
    logits = torch.randn(64, 100) * 5
    out = softmax_era(logits, 2.0, calibration=calibration)
    assert torch.equal(out.argmax(-1), logits.argmax(-1))
    # Monotone: sorted by the input logits, the outputs never decrease (up to float32 round-off).
    in_input_order = out.gather(-1, logits.argsort(-1))
    assert (in_input_order.diff(dim=-1) >= -1e-6).all()
    exact = softmax_era(logits.double(), 2.0, calibration=calibration)
    assert (exact.gather(-1, logits.argsort(-1)).diff(dim=-1) > 0).all()


def test_h_inverse_is_the_exact_inverse_of_h():
    c = torch.logspace(-300, math.log10(math.log(4) / 4), 4000, dtype=torch.float64)
    x = h_inverse(c)
    assert (x <= -1).all()
    torch.testing.assert_close(-x * x.exp(), c, rtol=1e-12, atol=0)


def test_tight_constant_is_monotone_and_bounded():
    d = torch.tensor(1000.0)
    constants = [tight_constant(d, h).item() for h in torch.linspace(0.01, 6.8, 30).tolist()]
    assert all(a < b for a, b in itertools.pairwise(constants))
    assert math.log(4) / 4 <= constants[0] and constants[-1] < 1000 * math.log(4) / 4


def test_masked_classes_get_zero_probability_and_do_not_count():
    logits = torch.randn(3, 8, dtype=torch.float64)
    logits[:, 5:] = -math.inf
    for calibration in ("paper", "tight"):
        out = softmax_era(logits, 1.0, calibration=calibration)
        assert torch.isneginf(out[:, 5:]).all()
        expected = softmax_era(logits[:, :5], 1.0, calibration=calibration)
        torch.testing.assert_close(out[:, :5], expected)


def test_rows_with_different_masks():
    logits = torch.randn(2, 6, dtype=torch.float64)
    logits[0, 3:] = -math.inf
    out = softmax_era(logits, 0.5, calibration="tight")
    torch.testing.assert_close(out[0, :3], softmax_era(logits[0, :3], 0.5, calibration="tight"))
    torch.testing.assert_close(out[1], softmax_era(logits[1], 0.5, calibration="tight"))


def test_dim_argument():
    logits = torch.randn(4, 10, 3)
    out = softmax_era(logits, 1.0, dim=1)
    torch.testing.assert_close(out, softmax_era(logits.transpose(1, 2), 1.0).transpose(1, 2))


@pytest.mark.parametrize("calibration", ["paper", "tight"])
def test_gradcheck(calibration):
    logits = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z: softmax_era(z, 0.8, calibration=calibration), (logits,)
    )
    masked = torch.randn(2, 6, dtype=torch.float64)
    masked[:, 4:] = -math.inf
    masked.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: softmax_era(z, 0.5)[:, :4], (masked,))


def test_gradcheck_h_inverse():
    c = torch.linspace(1e-3, 0.34, 20, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(h_inverse, (c,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_finite_at_extreme_inputs(dtype):
    logits = (torch.randn(8, 5000) * 1e4).to(dtype).requires_grad_(True)
    out = softmax_era(logits, 0.1)
    loss = torch.nn.functional.cross_entropy(out.float(), torch.randint(0, 5000, (8,)))
    loss.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"min_entropy": math.log(10)}, "min_entropy"),
        ({"min_entropy": 2.3}, "min_entropy"),  # above 1 + log(D log(tau)/tau): argmax would flip
        ({"min_entropy": -0.5}, "min_entropy"),
        ({"min_entropy": math.log(10), "calibration": "tight"}, "min_entropy"),
        ({"min_entropy": -1e-3, "calibration": "tight"}, "min_entropy"),
        ({"min_entropy": 0.5, "tau": math.e}, "tau"),
        ({"min_entropy": 0.5, "tau": 1.0}, "tau"),
        ({"min_entropy": 0.5, "calibration": "loose"}, "calibration"),
    ],
)
def test_infeasible_configuration_is_refused(kwargs, name):
    with pytest.raises(ValueError, match=name):
        softmax_era(torch.randn(2, 10), **kwargs)


def test_single_class_and_too_heavily_masked_rows_are_refused():
    with pytest.raises(ValueError, match="num_classes"):
        softmax_era(torch.randn(2, 1), 0.1)
    logits = torch.randn(2, 10)
    logits[1, 2:] = -math.inf
    with pytest.raises(ValueError, match="only 2 unmasked"):
        softmax_era(logits, 1.5)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_logits_are_refused(bad):
    logits = torch.randn(2, 10)
    logits[0, 3] = bad
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        softmax_era(logits, 0.5)


def test_module_matches_function():
    module = SoftmaxERA(0.6, tau=5.0, calibration="tight", dim=0)
    logits = torch.randn(10, 4)
    torch.testing.assert_close(module(logits), softmax_era(logits, 0.6, 5.0, "tight", 0))
    assert repr(module) == "SoftmaxERA(min_entropy=0.6, tau=5, calibration='tight', dim=0)"
    with pytest.raises(ValueError, match="tau"):
        SoftmaxERA(0.6, tau=2.0)


def test_compiles():
    module = torch.nn.Sequential(torch.nn.Linear(8, 10), SoftmaxERA(0.6))
    x = torch.randn(4, 8)
    torch.testing.assert_close(torch.compile(module, backend="eager")(x), module(x))


# Measured: torch 2.4-2.7 stop at "Unexpected type in sourceless builder builtins.method".
@requires_torch("2.8", "earlier torch.export cannot trace softmax_era's autograd Function")
def test_exports():
    module = torch.nn.Sequential(torch.nn.Linear(8, 10), SoftmaxERA(0.6))
    x = torch.randn(4, 8)
    expected = module(x)
    exported = torch.export.export(module, (x,))
    torch.testing.assert_close(exported.module()(x), expected)


def test_compiled_gradients_match_eager():
    module = torch.nn.Sequential(torch.nn.Linear(8, 10), SoftmaxERA(0.6, calibration="tight"))
    x = torch.randn(4, 8)

    def gradients(model):
        module.zero_grad()
        model(x).pow(2).sum().backward()
        return [parameter.grad.clone() for parameter in module.parameters()]

    expected = gradients(module)
    # aot_eager traces the backward pass as well, without needing a C++ compiler.
    for got, want in zip(gradients(torch.compile(module, backend="aot_eager")), expected):
        torch.testing.assert_close(got, want)


def test_masked_logits_get_zero_gradient_and_double_backward_is_refused():
    logits = torch.randn(2, 6, dtype=torch.float64)
    logits[:, 4:] = -math.inf
    logits.requires_grad_(True)
    out = softmax_era(logits, 0.5)
    (gradient,) = torch.autograd.grad(out[:, :4].pow(2).sum(), logits, create_graph=True)
    assert (gradient[:, 4:] == 0).all()
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gradient.sum().backward()
