"""Bad input is refused with an error naming the argument; value checks never sync with CUDA."""

import contextlib
import math
import subprocess
import sys
import warnings

import pytest
import torch

from era_core import functional, validation
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
from era_core.functional import (
    gaussian_era,
    h_inverse,
    response_entropy,
    softmax_era,
    softmax_era_bounds,
    token_era,
    token_era_scale,
)
from era_core.nn import GaussianERA, SoftmaxERA
from era_core.testing import cpu_and_cuda

UNIT = 0.5 * math.log(2 * math.pi * math.e)
LABELS = torch.zeros(2, dtype=torch.long)
FLOAT = torch.randn(2, 5)

# name -> (argument the error must name, call with a tensor factory of the bad dtype)
CALLS = {
    "softmax_era": ("logits", lambda t: softmax_era(t(2, 5), 0.5)),
    "SoftmaxERA": ("logits", lambda t: SoftmaxERA(0.5)(t(2, 5))),
    "gaussian_era": ("raw_scale", lambda t: gaussian_era(t(2, 5), 1.0)),
    "gaussian_era target": ("target_entropy", lambda t: gaussian_era(FLOAT, t(2))),
    "GaussianERA": ("raw_scale", lambda t: GaussianERA(1.0)(t(2, 5))),
    "h_inverse": ("c", lambda t: h_inverse(t(3))),
    "response_entropy": ("token_entropy", lambda t: response_entropy(t(2, 5), FLOAT > 0)),
    "token_era_scale entropy": ("response_entropy", lambda t: token_era_scale(t(2), FLOAT)),
    "token_era_scale advantages": ("advantages", lambda t: token_era_scale(FLOAT[:, 0], t(2))),
    "token_era": ("logits", lambda t: token_era(t(2, 5), FLOAT[:, 0], FLOAT[:, 0])),
    "gaussian_entropy": ("log_std", lambda t: gaussian_entropy(t(2, 5))),
    "tanh_gaussian_entropy": ("mean", lambda t: tanh_gaussian_entropy(t(2, 5), FLOAT)),
    "categorical_entropy": ("logits", lambda t: categorical_entropy(t(2, 5))),
    "logprobs_and_entropy": ("logits", lambda t: logprobs_and_entropy(t(2, 5), LABELS)),
    "linear_logprobs_and_entropy": (
        "hidden",
        lambda t: linear_logprobs_and_entropy(t(2, 5), FLOAT, LABELS),
    ),
    "topk_logprobs": ("logits", lambda t: topk_logprobs(t(2, 5), LABELS, k=2)),
    "TruncatedNormal": ("loc", lambda t: TruncatedNormal(t(2), 0.5)),
    "DeltaTuner.loss": ("entropy", lambda t: DeltaTuner(1.0).loss(t(4))),
}
BAD_DTYPES = [torch.int64, torch.int32, torch.bool, torch.complex64]


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=str)
@pytest.mark.parametrize("call", list(CALLS))
def test_non_floating_inputs_are_refused_naming_the_dtype(call, dtype):
    name, run = CALLS[call]
    with pytest.raises(
        TypeError, match=rf"^{name} must be a floating-point tensor, got dtype {dtype}$"
    ):
        run(lambda *shape: torch.ones(shape, dtype=dtype))


@pytest.mark.parametrize("call", list(CALLS))
def test_the_same_calls_accept_floating_inputs(call):
    _, run = CALLS[call]
    run(lambda *shape: torch.rand(shape) * 0.3 + 0.01)  # also valid as h_inverse's c


def test_labels_must_be_integers():
    with pytest.raises(
        TypeError, match=r"labels must be an integer tensor, got dtype torch\.float32"
    ):
        logprobs_and_entropy(FLOAT, LABELS.float())


@pytest.mark.parametrize("bad", [-math.inf, math.nan, math.inf])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_gaussian_era_refuses_non_finite_targets(bad, as_tensor):
    target = torch.tensor([0.5, bad]) if as_tensor else bad
    with pytest.raises(ValueError, match=r"^target_entropy must be in \(-inf, .*got (-?inf|nan)"):
        gaussian_era(torch.zeros(2, 3), target)
    with pytest.raises(ValueError, match="target_entropy"):
        GaussianERA(0.5)(torch.zeros(2, 3), target)


def test_tensor_target_above_the_maximum_is_refused_on_cpu():
    with pytest.raises(ValueError, match="target_entropy must be in"):
        gaussian_era(torch.zeros(2, 3), torch.tensor([0.0, 3 * UNIT + 0.01]))


def test_tensor_target_that_requires_grad_is_checked_without_warning_and_gets_gradient():
    # pytest runs with filterwarnings=error: a warning from reading the target would fail here.
    target = torch.tensor([0.5, 1.0], requires_grad=True)
    log_std = gaussian_era(torch.randn(2, 3), target)
    (grad,) = torch.autograd.grad(gaussian_entropy(log_std).sum(), target)
    torch.testing.assert_close(grad, torch.ones(2))


@pytest.mark.parametrize(
    ("target_shape", "ok"), [((), True), ((4,), True), ((4, 1), False), ((3,), False)]
)
def test_tensor_target_must_broadcast_to_the_batch(target_shape, ok):
    raw, target = torch.randn(4, 3), torch.full(target_shape, 0.5)
    if ok:
        assert gaussian_era(raw, target).shape == raw.shape
    else:
        with pytest.raises(ValueError, match=r"target_entropy must broadcast to .* \(4,\)"):
            gaussian_era(raw, target)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gaussian_era_computes_in_float32_and_rounds_half_precision_up(dtype):
    raw = (torch.randn(4096, 6) * 3).to(dtype).requires_grad_(True)
    target = 1.5  # the case: bf16 used to give 1.468
    log_std = gaussian_era(raw, target)
    exact = gaussian_era(raw.detach().float(), target)
    assert log_std.dtype == dtype
    # Rounded up, by less than one unit in the last place (the step below the result).
    gap = log_std.float() - exact
    ulp = log_std.float() - torch.nextafter(log_std, torch.full_like(log_std, -math.inf)).float()
    assert (gap >= 0).all() and (gap < ulp).all()
    entropy = gaussian_entropy(log_std.double())
    assert (entropy >= target).all()
    assert (entropy - target).max() < 6 * ulp.max()
    (grad,) = torch.autograd.grad(log_std.float().sum(), raw)
    assert grad.dtype == dtype and torch.isfinite(grad).all()


def test_gaussian_era_returns_the_input_dtype_for_a_float64_target():
    out = gaussian_era(torch.randn(3, 2), torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    assert out.dtype == torch.float32


@pytest.mark.parametrize("tau", [math.e + 1e-7, math.e + 1e-5, math.e + 2e-4, 2.72])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("calibration", ["paper", "tight"])
def test_softmax_era_stays_finite_as_tau_nears_e(tau, dtype, calibration):
    for num_classes in (2, 10, 1000):
        low, high = softmax_era_bounds(num_classes, tau, calibration)
        for frac in (0.01, 0.5, 0.999, 0.999999):
            min_entropy = low + frac * (high - low)
            logits = torch.randn(32, num_classes) * torch.logspace(-3, 3, 32)[:, None]
            logits[0] = -100.0
            logits[0, 0] = 100.0  # the one-hot limit
            logits = logits.to(dtype).requires_grad_(True)
            out = softmax_era(logits, min_entropy, tau, calibration)
            (grad,) = torch.autograd.grad(out.float().logsumexp(-1).sum(), logits)
            assert torch.isfinite(out).all() and torch.isfinite(grad).all()
            if dtype == torch.float32:  # float32's precision loss near e, as documented
                assert (categorical_entropy(out.double()) >= min_entropy - 5e-4).all()


def test_h_inverse_at_the_branch_point():
    c = torch.tensor([math.exp(-1.0)], dtype=torch.float32)
    torch.testing.assert_close(h_inverse(c), torch.tensor([-1.0]), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match=r"^c must be in \(0, "):
        h_inverse(torch.tensor([0.1, 0.4]))


@pytest.mark.parametrize("dim", [2, -3, 7])
def test_bad_dim_is_a_value_error_naming_dim(dim):
    logits = torch.randn(3, 4)
    match = rf"^dim must be in \[-2, 1\] for a 2-dim tensor, got {dim}$"
    for run in (
        lambda: softmax_era(logits, 0.5, dim=dim),
        lambda: SoftmaxERA(0.5, dim=dim)(logits),
        lambda: categorical_entropy(logits, dim=dim),
        lambda: categorical_entropy(logits, dim=dim, chunk_size=2),
    ):
        with pytest.raises(ValueError, match=match):
            run()


@pytest.mark.parametrize(
    ("run", "name"),
    [
        (lambda: response_entropy(torch.rand(2, 5), torch.ones(2, 4)), "mask"),
        (lambda: response_entropy(torch.rand(2, 5), torch.ones(5)), "mask"),
        (lambda: token_era_scale(torch.rand(3), torch.randn(2, 5)), "response_entropy"),
        (lambda: token_era(torch.randn(2, 4, 9), torch.rand(2), torch.randn(2, 5)), "logits"),
        (lambda: token_era(torch.randn(2, 5), torch.rand(2), torch.randn(2, 5)), "logits"),
        (lambda: logprobs_and_entropy(torch.randn(2, 5, 9), torch.zeros(2, 4).long()), "labels"),
        (lambda: topk_logprobs(torch.randn(2, 9), torch.zeros(3).long()), "labels"),
        (
            lambda: linear_logprobs_and_entropy(
                torch.randn(2, 5), torch.randn(9, 5), LABELS, logit_scale=torch.ones(3)
            ),
            "logit_scale",
        ),
    ],
)
def test_shape_mismatches_are_value_errors_naming_the_argument(run, name):
    with pytest.raises(ValueError, match=rf"^{name} must have shape"):
        run()


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_empty_class_dimension_is_refused(chunk_size):
    with pytest.raises(ValueError, match="logits must have at least one class along dim=1"):
        categorical_entropy(torch.zeros(3, 0), chunk_size=chunk_size)
    with pytest.raises(ValueError, match="logits must have a non-empty last dimension"):
        logprobs_and_entropy(torch.zeros(3, 0), torch.zeros(3).long())


@pytest.fixture
def unchecked(monkeypatch):
    """Run the code path of CUDA and torch.compile on CPU: no check reads a tensor's values."""
    for module in (validation, functional):
        monkeypatch.setattr(module, "checks_values", lambda tensor: False)


@pytest.mark.usefixtures("unchecked")
def test_without_value_checks_bad_values_give_nan_instead_of_an_error():
    assert torch.isnan(gaussian_era(torch.zeros(2, 3), torch.tensor([0.5, math.nan]))[1]).all()
    logits = torch.randn(3, 10)
    logits[1, 2] = math.nan
    logits[2, 1:] = -math.inf  # a single unmasked class
    out = softmax_era(logits, 0.5)
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1:, :1]).all()


@pytest.mark.parametrize("calibration", ["paper", "tight"])
def test_unchecked_path_matches_the_checked_one(calibration, monkeypatch):
    logits = torch.randn(6, 50, dtype=torch.float64) * 5
    logits[:2, 30:] = -math.inf
    expected = [softmax_era(logits, 1.2, calibration=calibration)]
    expected.append(softmax_era(logits[2:], 1.2, calibration=calibration))
    for module in (validation, functional):
        monkeypatch.setattr(module, "checks_values", lambda tensor: False)
    torch.testing.assert_close(softmax_era(logits, 1.2, calibration=calibration), expected[0])
    torch.testing.assert_close(softmax_era(logits[2:], 1.2, calibration=calibration), expected[1])


@contextlib.contextmanager
def no_host_sync(device):
    """On CUDA, any call that makes the host wait for the device raises."""
    if device != "cuda":
        yield
        return
    torch.cuda.synchronize()
    with warnings.catch_warnings():
        # torch 2.11 announces, once per process, that the mode is a prototype.
        warnings.filterwarnings("ignore", "Synchronization debug mode is a prototype")
        torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("calibration", ["paper", "tight"])
def test_activations_do_not_sync_with_the_host(device, calibration):
    raw = torch.randn(64, 6, device=device, requires_grad=True)
    target = torch.full((64,), 1.5, device=device, requires_grad=True)
    logits = torch.randn(64, 100, device=device)
    logits[:8, 50:] = -math.inf
    logits.requires_grad_(True)
    softmax_era(logits, 1.2, calibration=calibration)  # builds the cached tight table once
    with no_host_sync(device):
        log_std = gaussian_era(raw, target)
        out = softmax_era(logits, 1.2, calibration=calibration)
        loss = gaussian_entropy(log_std).sum() + out[:, :50].logsumexp(-1).sum()
        grads = torch.autograd.grad(loss, (raw, target, logits))
    assert all(torch.isfinite(grad).all() for grad in grads)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_llm_rule_and_entropies_do_not_sync_with_the_host(device):
    logits = torch.randn(4, 8, 50, device=device, requires_grad=True)
    mask = torch.rand(4, 8, device=device) > 0.2
    advantages = torch.randn(4, 8, device=device)
    labels = torch.randint(0, 50, (4, 8), device=device)
    with no_host_sync(device):
        token_entropy = categorical_entropy(logits)
        h_resp = response_entropy(token_entropy.detach(), mask)
        scaled, _ = token_era(logits, h_resp, advantages)
        logprobs, entropy = logprobs_and_entropy(scaled, labels, chunk_size=8)
        top = topk_logprobs(scaled, labels, k=5)
        (grad,) = torch.autograd.grad((logprobs + entropy + top).sum(), logits)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "call",
    [
        lambda raw: gaussian_era(raw, -1.0),
        lambda raw: functional.truncated_gaussian_era(torch.zeros_like(raw), raw, -1.0),
    ],
    ids=["gaussian_era", "truncated_gaussian_era"],
)
def test_non_finite_raw_scale_is_refused_on_cpu(call, bad):
    raw = torch.zeros(2, 3)
    raw[1, 2] = bad
    with pytest.raises(ValueError, match=r"^raw_scale must be in \(-inf, inf\), got (-?inf|nan)"):
        call(raw)


@pytest.mark.parametrize(
    ("low", "high", "name"),
    [
        (-math.inf, 0.0, "log_std_min"),
        (-8.0, math.inf, "log_std_max"),
        (-8.0, math.nan, "log_std_max"),
        (math.nan, 0.0, "log_std_min"),
    ],
)
def test_non_finite_log_std_bounds_are_refused_naming_the_bound(low, high, name):
    pattern = rf"^{name} must be in \(-inf, inf\)"
    with pytest.raises(ValueError, match=pattern):
        gaussian_era(torch.zeros(2, 3), -1.0, low, high)
    with pytest.raises(ValueError, match=pattern):
        functional.truncated_normal_entropy_bounds(low, high)
    with pytest.raises(ValueError, match=pattern):
        GaussianERA(-1.0, low, high)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_delta_tuner_refuses_a_non_finite_target(bad):
    with pytest.raises(ValueError, match=r"^target_entropy must be in \(-inf, inf\)"):
        DeltaTuner(bad)


def test_testing_helpers_import_without_pytest():
    code = "import sys; sys.modules['pytest'] = None; import era_core.testing"
    subprocess.run([sys.executable, "-c", code], check=True)
