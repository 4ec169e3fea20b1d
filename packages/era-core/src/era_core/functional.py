"""Entropy Regularizing Activations as pure functions.

Each activation maps a network's raw output to the parameters of a distribution whose
entropy is at least a floor, for every input, by construction (method.md §1-§3).

Rules shared by every function here and in ``era_core.entropy`` and ``era_core.nn``:

- **dtype.** Tensor inputs that are computed on must be floating point (float16, bfloat16,
  float32 or float64); integer, bool and complex tensors raise ``TypeError`` naming the
  dtype (masks and labels are the exceptions, as documented). The math runs in float32, or
  float64 for float64 inputs: half-precision inputs are upcast, never the reverse. Activations
  return the input's dtype; entropies and log-probs are returned in the compute dtype.
- **Checks.** Bad arguments raise ``ValueError`` naming the parameter and the allowed range,
  including a ``dim`` out of range and a mask or target whose shape does not fit. Checks on
  the values inside tensors (finite targets, NaN logits) run on CPU tensors in eager mode
  only, so a CUDA call never waits for the device and ``torch.compile`` sees no graph break;
  there, bad values give NaN instead (see ``era_core.validation``).
"""

import functools
import math
from typing import Any, Literal

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from era_core.entropy import std_normal_cdf, std_normal_pdf
from era_core.validation import (
    check_dim,
    check_finite,
    check_floating,
    check_range,
    check_shape,
    check_tensor_finite,
    check_tensor_range,
    checks_values,
    compute_dtype,
)

__all__ = [
    "gaussian_era",
    "h_inverse",
    "response_entropy",
    "softmax_era",
    "softmax_era_bounds",
    "tight_constant",
    "token_era",
    "token_era_scale",
    "truncated_gaussian_era",
    "truncated_normal_entropy_bounds",
]

Calibration = Literal["paper", "tight"]

# Entropy of a unit-variance 1-D Gaussian: log(sqrt(2*pi*e)).
_GAUSSIAN_UNIT_ENTROPY = 0.5 * math.log(2 * math.pi * math.e)


# --------------------------------------------------------------------------- Gaussian


def gaussian_era(
    raw_scale: Tensor,
    target_entropy: float | Tensor,
    log_std_min: float = -8.0,
    log_std_max: float = 0.0,
) -> Tensor:
    """Map raw scale outputs to log-stds whose diagonal Gaussian has entropy >= target.

    ``log_std = max(log_std_max + (H0 - D*log(sqrt(2*pi*e)) - D*log_std_max) * softmax(s), log_std_min)``.
    Without the clip the Gaussian's entropy is exactly ``target_entropy``; the clip only raises it.
    The network still chooses how the entropy budget is spread over dimensions.

    The math runs in float32 (or float64); a float16/bfloat16 result is rounded up, never
    down, so the entropy of the returned log-stds stays at or above the floor (it can exceed
    it by a few units in the last place per dimension).

    Args:
        raw_scale: Raw network output ``s``, shape ``(*batch, D)``, floating point.
        target_entropy: Entropy floor ``H0'`` in nats, finite: a float or a floating-point
            tensor broadcastable to ``batch`` (e.g. one target per ensemble member). Gradients
            flow into a tensor target; detach it if it must stay fixed.
        log_std_min: Lower clip of each log-std.
        log_std_max: Upper bound of each log-std; fixes the maximum reachable entropy.

    Returns:
        ``log_std`` with the shape and dtype of ``raw_scale``.

    Raises:
        TypeError: ``raw_scale`` or a tensor target is not floating point.
        ValueError: ``log_std_min >= log_std_max``, a target's shape does not broadcast to
            ``batch``, or a target is not finite or not below the maximum entropy
            ``D * (log_std_max + log(sqrt(2*pi*e)))`` (tensor targets: checked on CPU only).

    A NaN or infinite ``raw_scale`` is refused on CPU in eager mode (like every value check:
    no host sync on an accelerator).
    """
    check_floating("raw_scale", raw_scale)
    check_tensor_finite("raw_scale", raw_scale)
    if raw_scale.dim() == 0:
        raise ValueError(
            "raw_scale must have a last dimension of action dims D, got a 0-dim tensor"
        )
    check_log_std_bounds(log_std_min, log_std_max)
    dim = raw_scale.shape[-1]
    max_entropy = dim * (log_std_max + _GAUSSIAN_UNIT_ENTROPY)
    _check_target_entropy(
        target_entropy,
        raw_scale.shape[:-1],
        max_entropy,
        f"a {dim}-dim Gaussian with log_std <= {log_std_max:g}",
    )
    if isinstance(target_entropy, Tensor):  # a half-precision target would round the budget
        target_entropy = target_entropy.to(compute_dtype(raw_scale))
    budget = target_entropy - dim * (_GAUSSIAN_UNIT_ENTROPY + log_std_max)
    if isinstance(budget, Tensor):
        budget = budget.unsqueeze(-1)
    weights = torch.softmax(raw_scale.to(compute_dtype(raw_scale)), dim=-1)
    log_std = (log_std_max + budget * weights).clamp(min=log_std_min)
    return _round_up_to(log_std, raw_scale.dtype)


def check_log_std_bounds(log_std_min: float, log_std_max: float) -> None:
    """Refuse log-std bounds that are not finite or not ordered (an infinite one gives NaN)."""
    for name, value in (("log_std_min", log_std_min), ("log_std_max", log_std_max)):
        check_finite(name, value)
    check_range(
        "log_std_min",
        log_std_min,
        None,
        log_std_max,
        high_inclusive=False,
        why=f"must be below log_std_max={log_std_max:g}",
    )


def _check_target_entropy(
    target_entropy: float | Tensor, batch: torch.Size, max_entropy: float, what: str
) -> None:
    """Refuse a target that is not finite or not below ``max_entropy``, the entropy of ``what``.

    A tensor target must be floating point and broadcast to exactly ``batch``.
    """
    bounds: dict[str, Any] = {
        "low": -math.inf,
        "high": max_entropy,
        "low_inclusive": False,
        "high_inclusive": False,
        "why": f"finite, below the maximum entropy of {what}",
    }
    if isinstance(target_entropy, Tensor):
        check_floating("target_entropy", target_entropy)
        if not _broadcasts_to(target_entropy.shape, batch):
            raise ValueError(
                f"target_entropy must broadcast to raw_scale's batch shape {tuple(batch)}, "
                f"got shape {tuple(target_entropy.shape)}"
            )
        check_tensor_range("target_entropy", target_entropy, **bounds)
    else:
        check_range("target_entropy", target_entropy, **bounds)


def _broadcasts_to(shape: torch.Size, full: torch.Size) -> bool:
    """Whether ``shape`` broadcasts to exactly ``full`` (``torch.broadcast_shapes`` costs 0.1 ms)."""
    return len(shape) <= len(full) and all(
        size in (1, other) for size, other in zip(reversed(shape), reversed(full))
    )


def _round_up_to(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` cast to ``dtype``, rounding up where round-to-nearest went down.

    A Gaussian's entropy grows with every log-std, so rounding them up keeps its floor. The
    correction is a constant: the gradient is that of the cast.
    """
    rounded = x.to(dtype)
    if dtype == x.dtype:
        return rounded
    nearest = rounded.detach()
    up = torch.nextafter(nearest, torch.full_like(nearest, math.inf))
    return rounded + torch.where(nearest < x.detach(), up - nearest, 0.0)


# --------------------------------------------------------------------------- softmax


@torch.no_grad()
def _lambert_w_minus1(b: Tensor) -> Tensor:
    """``x = W_{-1}(-c) <= -1`` from ``b = log(c) + 1 = log(e c) < 0``, elementwise, without autograd.

    Newton's method on ``y = -x`` for ``g(y) = log(y) - y - log(c)`` (the equation in log
    space, well scaled for tiny ``c``), whose step simplifies to ``y <- y (log(y) - b) / (y - 1)``,
    started from the closed-form approximation the reference code uses as its final answer,
    ``y = 1 + sqrt(2u) + 3u/4`` with ``u = -b``. Measured over ``c`` in ``[1e-300, 1/e)``: two
    steps leave a relative error of 1.2e-8 in ``c`` (below float32's epsilon), three reach
    float64 round-off. The steps work in place on two buffers (``b`` is one of them, the
    callers pass scratch): on CPU, fresh memory costs more than the arithmetic.

    Near the branch point (``c -> 1/e``, which ``tau -> e`` reaches) rounding can push ``b``
    to 0 or above, where the step divides 0 by 0; capping ``b`` at ``-eps`` keeps ``y - 1``
    at about ``sqrt(2 eps)`` instead, so the result stays finite (``x ~ -1``) in float32.
    """
    b = b.clamp_(max=-torch.finfo(b.dtype).eps)
    y = torch.mul(b, -2.0).sqrt_().sub_(b, alpha=0.75).add_(1.0)
    spare = torch.empty_like(y)
    for _ in range(3 if b.dtype == torch.float64 else 2):
        numerator = torch.log(y, out=spare).sub_(b).mul_(y)
        # y - 1 in place: the old iterate is not needed again.
        y, spare = numerator.div_(y.sub_(1.0)), y
    return y.neg_()


class _HInverse(torch.autograd.Function):
    """``h^{-1}(c) = W_{-1}(-c)`` with the analytic derivative ``1 / h'(x)``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(c: Tensor) -> Tensor:  # type: ignore[override]
        return _lambert_w_minus1(torch.log(c).add_(1.0))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:  # type: ignore[override]
        ctx.save_for_backward(inputs[0], output)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        c, x = ctx.saved_tensors  # type: ignore[attr-defined]
        # h(x) = -x e^x, h'(x) = -(1 + x) e^x, and e^x = -c / x, so 1/h'(x) = x / (c (1 + x)):
        # this form stays finite where e^x underflows.
        return grad * x / (c * (1.0 + x))


def h_inverse(c: Tensor) -> Tensor:
    """Exact inverse of ``h(x) = -x e^x`` on ``x <= -1``, i.e. the Lambert ``W_{-1}(-c)``.

    Args:
        c: Floating-point values in ``(0, 1/e]``.

    Returns:
        ``x <= -1`` with ``-x * exp(x) == c``; differentiable with the analytic gradient.
    """
    check_floating("c", c)
    # 1/e itself, rounded to c's dtype, may land just above 1/e: allow one unit of rounding.
    check_tensor_range(
        "c", c, 0.0, math.exp(-1.0) * (1 + torch.finfo(c.dtype).eps), low_inclusive=False
    )
    x: Tensor = _HInverse.apply(c)  # pyright: ignore[reportUnknownMemberType]
    return x


def _log_tau_over_tau(tau: float) -> float:
    check_range(
        "tau",
        tau,
        math.e,
        None,
        low_inclusive=False,
        why="h^-1(log(tau)/tau) must lie on the branch x <= -1",
    )
    return math.log(tau) / tau


def _one_hot_limit_entropy(constant: Tensor, num_classes: Tensor, tau: float) -> Tensor:
    """Entropy of ``softmax(softmax_era(z))`` when ``softmax(z)`` tends to a one-hot vector."""
    lt = math.log(tau) / tau
    c_rest = (constant - lt) / (num_classes - 1)
    total = 1.0 / tau + (num_classes - 1) * torch.exp(h_inverse(c_rest.clamp(min=1e-300)))
    return constant / total + torch.log(total)


@functools.lru_cache(maxsize=256)
def _tight_constant_cached(num_classes: int, min_entropy: float, tau: float) -> float:
    return float(tight_constant(torch.tensor(float(num_classes)), min_entropy, tau))


@functools.lru_cache(maxsize=8)
def _tight_constant_table(
    num_classes: int, min_entropy: float, tau: float, device: torch.device
) -> Tensor:
    """``C`` for every count of unmasked classes ``0..D``, on ``device``; NaN where infeasible.

    Rows look their constant up on the device, so no row's class count is read by the host;
    one bisection per (D, H0, tau, device) replaces one per call.
    """
    counts = torch.arange(num_classes + 1, dtype=torch.float64, device=device)
    feasible = (counts >= 2) & (min_entropy < torch.log(counts))
    return torch.where(feasible, tight_constant(counts.clamp(min=2), min_entropy, tau), math.nan)


def tight_constant(num_classes: Tensor, min_entropy: float, tau: float = 4.0) -> Tensor:
    """Solve for ``C`` such that the one-hot-limit entropy of ``softmax_era`` equals ``min_entropy``.

    The one-hot limit is the worst case; its entropy grows monotonically with ``C`` from 0
    (at ``C = log(tau)/tau``) to ``log D`` (at ``C = D*log(tau)/tau``), so bisection in
    float64 finds the root to round-off.

    Args:
        num_classes: Number of (unmasked) classes ``D``, any shape.
        min_entropy: Target minimum entropy ``H0`` in ``[0, log D)``.
        tau: The activation's ``tau > e``.

    Returns:
        ``C`` in float64 with the shape of ``num_classes``.
    """
    check_range("min_entropy", min_entropy, 0.0, None, why="the tight calibration's range")
    lt = _log_tau_over_tau(tau)
    d = num_classes.to(torch.float64)
    low, high = torch.full_like(d, lt), d * lt
    for _ in range(64):
        mid = 0.5 * (low + high)
        below = _one_hot_limit_entropy(mid, d, tau) < min_entropy
        low, high = torch.where(below, mid, low), torch.where(below, high, mid)
    return 0.5 * (low + high)


class _SoftmaxERA(torch.autograd.Function):
    """``z -> h^{-1}(c)`` with ``c = slope * (softmax(z) + shift)`` over the last dim, fused.

    One function lets the forward pass work in place and save only ``p`` and ``dz'/dp``;
    the backward pass is four elementwise passes instead of autograd's walk through every
    Newton step. The caller passes ``shift`` and ``log(e * slope)`` (floats, or tensors that
    broadcast per row).
    """

    @staticmethod
    @torch.no_grad()  # autograd already is off here in eager mode, not while torch.export traces
    def forward(  # type: ignore[override]
        ctx: Any,
        z: Tensor,
        shift: float | Tensor,
        log_e_slope: float | Tensor,
        masked: Tensor | None,
    ) -> Tensor:
        p = torch.softmax(z, dim=-1)
        log_e_c = torch.add(p, shift).log_().add_(log_e_slope)
        out = _lambert_w_minus1(log_e_c)
        q = torch.add(p, shift, out=log_e_c)  # c / slope, in a buffer that is free again
        # dz'/dp = slope / h'(z') = z' / (q (1 + z')): finite where e^{z'} underflows, and
        # free of slope.
        derivative = torch.add(out, 1.0).mul_(q)
        derivative = torch.div(out, derivative, out=derivative)
        if masked is not None:
            out.masked_fill_(masked, -math.inf)
            derivative.masked_fill_(masked, 0.0)
        ctx.save_for_backward(p, derivative)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        p, derivative = ctx.saved_tensors  # type: ignore[attr-defined]
        weighted = torch.mul(grad, derivative).mul_(p)  # p_i * dL/dp_i
        # softmax's Jacobian: dL/dz_j = p_j (dL/dp_j - sum_i p_i dL/dp_i)
        return weighted.addcmul_(p, weighted.sum(-1, keepdim=True), value=-1.0), None, None, None


def softmax_era_bounds(
    num_classes: int, tau: float = 4.0, calibration: Calibration = "paper"
) -> tuple[float, float]:
    """Allowed ``[low, high)`` interval of ``min_entropy`` for ``num_classes`` classes.

    ``paper``: ``C = exp(H0 - 1)`` must satisfy ``log(tau)/tau <= C < D*log(tau)/tau`` (below,
    some ``c_i`` would be negative; above, the class order and so the argmax would flip).
    ``tight``: ``[0, log D)``, the range of the one-hot-limit entropy.
    """
    lt = _log_tau_over_tau(tau)
    if calibration == "tight":
        return 0.0, math.log(num_classes)
    return 1.0 + math.log(lt), 1.0 + math.log(num_classes * lt)


def _check_softmax_era_args(
    min_entropy: float, tau: float, calibration: str, num_classes: int
) -> None:
    if calibration not in ("paper", "tight"):
        raise ValueError(f"calibration must be 'paper' or 'tight', got {calibration!r}")
    check_range("num_classes", num_classes, 2, None, why="the size of the class dimension")
    low, high = softmax_era_bounds(num_classes, tau, calibration)  # type: ignore[arg-type]
    check_range(
        "min_entropy",
        min_entropy,
        low,
        high,
        high_inclusive=False,
        why=f"calibration={calibration!r}, D={num_classes}, tau={tau:g}",
    )


def softmax_era(
    logits: Tensor,
    min_entropy: float,
    tau: float = 4.0,
    calibration: Calibration = "paper",
    dim: int = -1,
) -> Tensor:
    """Map logits to logits whose softmax has entropy >= ``min_entropy`` for every input.

    With ``p = softmax(z)`` over ``D`` classes, ``c_i = log(tau)/tau * p_i + c_min * (1 - p_i)``
    where ``c_min = (C - log(tau)/tau) / (D - 1)``, so ``sum_i c_i = C``, and
    ``z'_i = h^{-1}(c_i) = W_{-1}(-c_i)`` exactly. Then ``H(softmax(z')) >= 1 + log C``.
    ``calibration="paper"`` uses ``C = exp(H0 - 1)``, so that bound is ``H0`` (the realised
    minimum is higher); ``"tight"`` solves for ``C`` so the worst case (one-hot limit) equals ``H0``.

    The class order is preserved (so is the argmax). Classes with logit ``-inf`` are masked:
    they get logit ``-inf`` back and do not count in ``D``. Rounding the result to
    bfloat16/float16 perturbs the guarantee: the paper calibration's slack absorbs it
    (measured: no violation), ``"tight"`` has none and can lose up to about 0.07 nats; use
    float32 logits where the exact floor matters. Float32 also loses precision as ``tau``
    nears ``e`` (the inverse's branch point): measured up to 2e-4 nats below the floor at
    ``tau = 2.72``, under 1e-5 from ``tau = 2.75``; the result stays finite.
    The backward pass is analytic and first-order: a double backward through it raises.

    Args:
        logits: Raw logits ``z``, floating point.
        min_entropy: Entropy floor ``H0`` in nats; see ``softmax_era_bounds`` for the range.
        tau: Shape constant, ``> e`` (reference 4).
        calibration: ``"paper"`` (``C = exp(H0 - 1)``) or ``"tight"`` (worst case equals ``H0``).
        dim: The class dimension.

    Returns:
        New logits, same shape and dtype.

    Raises:
        TypeError: ``logits`` is not floating point.
        ValueError: ``dim`` out of range, infeasible ``min_entropy``/``tau`` for the number
            of classes, NaN or ``+inf`` logits, or a row with too few unmasked classes. The
            data-dependent checks (the last two) run on CPU in eager mode only; on CUDA and
            under ``torch.compile``/``torch.export`` such rows come out NaN.
    """
    check_floating("logits", logits)
    dim = check_dim("dim", dim, logits.dim())
    num_classes = logits.shape[dim]
    _check_softmax_era_args(min_entropy, tau, calibration, num_classes)
    lt = math.log(tau) / tau
    z = logits.movedim(dim, -1)
    z = z.to(compute_dtype(z))
    # c_i = c_min + (lt - c_min) * p_i: a sum of two non-negative terms, so no cancellation
    # for tiny c_min; sum_i c_i = C.
    checked = checks_values(z)
    # One reduction finds the common case: a finite sum means every logit is finite. Only
    # where reading it is free: elsewhere every call takes the masked path.
    if checked and bool(torch.isfinite(z.sum())):
        constant = (
            math.exp(min_entropy - 1.0)
            if calibration == "paper"
            else _tight_constant_cached(num_classes, min_entropy, tau)
        )
        c_min = (constant - lt) / (num_classes - 1)
        slope = lt - c_min
        out: Tensor = _SoftmaxERA.apply(z, c_min / slope, 1.0 + math.log(slope), None)  # pyright: ignore[reportUnknownMemberType]
        return out.to(logits.dtype).movedim(-1, dim)

    masked = torch.isneginf(z)
    num_unmasked = (~masked).sum(-1, keepdim=True)
    if checked:
        if bool((torch.isnan(z) | torch.isposinf(z)).any()):
            raise ValueError("logits must not contain NaN or +inf (-inf marks a masked class)")
        fewest = int(num_unmasked.min())
        try:
            _check_softmax_era_args(min_entropy, tau, calibration, fewest)
        except ValueError as error:
            raise ValueError(f"a row has only {fewest} unmasked classes: {error}") from None
    d = num_unmasked.to(z.dtype)
    if calibration == "paper":
        row_constant = torch.full_like(d, math.exp(min_entropy - 1.0))
    elif checked or torch.compiler.is_compiling():
        row_constant = tight_constant(num_unmasked, min_entropy, tau).to(z.dtype)
    else:  # eager on an accelerator
        table = _tight_constant_table(num_classes, min_entropy, tau, z.device)
        row_constant = table[num_unmasked].to(z.dtype)
    c_min = (row_constant - lt) / (d - 1)
    slope = lt - c_min
    out = _SoftmaxERA.apply(z, c_min / slope, 1.0 + torch.log(slope), masked)  # pyright: ignore[reportUnknownMemberType]
    return out.to(logits.dtype).movedim(-1, dim)


# --------------------------------------------------------------------------- LLM


def response_entropy(token_entropy: Tensor, mask: Tensor, top_frac: float = 0.2) -> Tensor:
    """Mean of each response's highest token entropies (method.md §3, step 1).

    Per response of ``L`` valid tokens, averages the ``max(1, floor(top_frac * L))`` largest
    entries. A response with no valid token gets 0.

    Args:
        token_entropy: Per-token entropy of the original logits, shape ``(batch, seq)``,
            floating point.
        mask: Valid-token mask (bool or 0/1, any dtype), shape of ``token_entropy``.
        top_frac: Fraction of tokens to average, in ``(0, 1]``.

    Returns:
        Shape ``(batch,)``, dtype of ``token_entropy``. NaN entropies of valid tokens propagate.
    """
    check_floating("token_entropy", token_entropy)
    if token_entropy.dim() == 0:
        raise ValueError("token_entropy must have shape (batch, seq), got a 0-dim tensor")
    check_shape("mask", mask.shape, token_entropy.shape, "one flag per entry of token_entropy")
    check_range("top_frac", top_frac, 0.0, 1.0, low_inclusive=False)
    mask = mask.bool()
    length = mask.sum(-1, keepdim=True)
    count = torch.floor(length.double() * top_frac).clamp(min=1).to(length.dtype)
    ranked = token_entropy.masked_fill(~mask, -math.inf).sort(dim=-1, descending=True).values
    rank = torch.arange(ranked.shape[-1], device=ranked.device)
    chosen = (rank < count) & (rank < length)
    total = torch.where(chosen, ranked, 0.0).sum(-1)
    return total / count.squeeze(-1)


def token_era_scale(
    response_entropy: Tensor,
    advantages: Tensor,
    omega_low: float = 0.45,
    omega_high: float = 3.0,
    k: float = 2.0,
    scale_advantages: bool = True,
) -> tuple[Tensor, Tensor]:
    """Per-token logit scale and rescaled advantages of the LLM rule (method.md §3, step 2).

    For tokens with ``A > 0``: response entropy below ``omega_low`` sharpens nothing but
    scales logits by ``k`` (and ``A`` by ``1/k``); above ``omega_high`` scales logits by
    ``1/k`` (and ``A`` by ``k``). Everything else gets scale 1 and keeps its advantage.

    Args:
        response_entropy: Shape ``(batch,)``, from ``response_entropy``; floating point.
        advantages: Shape ``(batch,)`` or ``(batch, seq)``; floating point.
        omega_low: Lower entropy threshold, ``0 <= omega_low <= omega_high``.
        omega_high: Upper entropy threshold.
        k: Scale factor, ``> 1``.
        scale_advantages: Rescale advantages as the reference rule does.

    Returns:
        ``(logit_scale, advantages)``, both with the shape of ``advantages``; new tensors.
    """
    check_floating("response_entropy", response_entropy)
    check_floating("advantages", advantages)
    if advantages.dim() == 0:
        raise ValueError("advantages must have shape (batch,) or (batch, seq), got a 0-dim tensor")
    check_shape(
        "response_entropy",
        response_entropy.shape,
        advantages.shape[:1],
        "one entropy per response, advantages' first dim",
    )
    check_range("k", k, 1.0, None, low_inclusive=False)
    check_range(
        "omega_low", omega_low, 0.0, omega_high, why=f"must not exceed omega_high={omega_high:g}"
    )
    entropy = response_entropy.reshape(response_entropy.shape + (1,) * (advantages.dim() - 1))
    positive = advantages > 0
    sharpen = positive & (entropy < omega_low)
    flatten = positive & (entropy > omega_high)
    ones = torch.ones_like(advantages)
    scale = torch.where(sharpen, k * ones, torch.where(flatten, ones / k, ones))
    new_advantages = advantages / scale if scale_advantages else advantages.clone()
    return scale, new_advantages


def token_era(
    logits: Tensor,
    response_entropy: Tensor,
    advantages: Tensor,
    omega_low: float = 0.45,
    omega_high: float = 3.0,
    k: float = 2.0,
    scale_advantages: bool = True,
) -> tuple[Tensor, Tensor]:
    """Apply the LLM rule to materialised logits: ``z' = scale * z`` per token.

    For large vocabularies prefer ``token_era_scale`` with
    ``era_core.entropy.linear_logprobs_and_entropy(..., logit_scale=scale)``, which never
    builds full float32 logits.

    Args:
        logits: Shape ``advantages.shape + (..., vocab)``, floating point, e.g. ``(batch, seq,
            vocab)`` (or ``(batch, vocab)`` with per-sequence advantages).
        response_entropy: Shape ``(batch,)``.
        advantages: Shape ``(batch, seq)`` or ``(batch,)``.
        omega_low: See ``token_era_scale``.
        omega_high: See ``token_era_scale``.
        k: See ``token_era_scale``.
        scale_advantages: See ``token_era_scale``.

    Returns:
        ``(logits, advantages)``: new tensors; the inputs are not modified.
    """
    check_floating("logits", logits)
    if logits.dim() <= advantages.dim() or logits.shape[: advantages.dim()] != advantages.shape:
        raise ValueError(
            f"logits must have shape advantages' {tuple(advantages.shape)} + (..., vocab), "
            f"got {tuple(logits.shape)}"
        )
    scale, new_advantages = token_era_scale(
        response_entropy, advantages, omega_low, omega_high, k, scale_advantages
    )
    scale = scale.reshape(scale.shape + (1,) * (logits.dim() - scale.dim()))
    return logits * scale.to(logits.dtype), new_advantages


# --------------------------------------------------------------------------- truncated Gaussian


def _truncated_entropy_terms(log_std: Tensor, loc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Entropy ``H`` of ``N(loc, exp(log_std)^2)`` truncated to ``[-1, 1]`` and ``dH/dlog_std``, ``dH/dloc``.

    With ``a = (-1 - loc)/sigma``, ``b = (1 - loc)/sigma``, ``Z = Phi(b) - Phi(a)`` and
    ``phi`` the standard normal density, ``H = log(sqrt(2 pi e) sigma Z) + N / (2Z)`` where
    ``N = a phi(a) - b phi(b)``. Differentiating (``da/dlog_std = -a``, ``da/dloc = -1/sigma``):

    - ``dH/dlog_std = 1 + (N + M3) / (2Z) - N^2 / (2Z^2)``, ``M3 = a^3 phi(a) - b^3 phi(b)``;
    - ``dH/dloc = ((P + M2) / (2Z) - N P / (2Z^2)) / sigma``, ``P = phi(a) - phi(b)``,
      ``M2 = a^2 phi(a) - b^2 phi(b)``.

    ``loc`` in ``[-1, 1]`` keeps ``a <= 0 <= b``, so ``Z >= Phi(0) - Phi(a)`` has no cancellation
    for small ``sigma``. Elementwise; call it in float64.
    """
    parts = _truncated_parts(log_std, loc)
    entropy, d_log_std = _entropy_and_slope_of(log_std, parts)
    sigma, a, b, pa, pb, z, n = parts
    p, m2 = pa - pb, a * a * pa - b * b * pb
    d_loc = ((p + m2) / (2 * z) - n * p / (2 * z * z)) / sigma
    return entropy, d_log_std, d_loc


def _truncated_entropy_and_slope(log_std: Tensor, loc: Tensor) -> tuple[Tensor, Tensor]:
    """``H`` and ``dH/dlog_std`` of :func:`_truncated_entropy_terms`: what a Newton step needs."""
    return _entropy_and_slope_of(log_std, _truncated_parts(log_std, loc))


_Parts = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def _entropy_and_slope_of(log_std: Tensor, parts: _Parts) -> tuple[Tensor, Tensor]:
    _, a, b, pa, pb, z, n = parts
    m3 = a**3 * pa - b**3 * pb
    entropy = _GAUSSIAN_UNIT_ENTROPY + log_std + torch.log(z) + n / (2 * z)
    return entropy, 1.0 + (n + m3) / (2 * z) - n * n / (2 * z * z)


def _truncated_parts(log_std: Tensor, loc: Tensor) -> _Parts:
    """``sigma``, the standardised ends ``a, b``, ``phi(a), phi(b)``, the mass ``Z`` and ``N``."""
    sigma = log_std.exp()
    a, b = (-1.0 - loc) / sigma, (1.0 - loc) / sigma
    pa, pb = std_normal_pdf(a), std_normal_pdf(b)
    z = std_normal_cdf(b) - std_normal_cdf(a)
    return sigma, a, b, pa, pb, z, a * pa - b * pb


@functools.lru_cache(maxsize=64)  # a pure function of two floats, asked on every forward pass
def truncated_normal_entropy_bounds(log_std_min: float, log_std_max: float) -> tuple[float, float]:
    """Per-dimension entropy range ``[h_min, h_max]`` of :func:`truncated_gaussian_era`.

    The entropies of the centred truncated normals ``N(0, exp(log_std)^2)`` on ``[-1, 1]``
    with ``log_std = log_std_min`` and ``log_std_max``; ``h_max < log 2`` (the uniform's).
    """
    check_log_std_bounds(log_std_min, log_std_max)
    bounds = torch.tensor([log_std_min, log_std_max], dtype=torch.float64)
    entropy, _ = _truncated_entropy_and_slope(bounds, torch.zeros_like(bounds))
    return float(entropy[0]), float(entropy[1])


def _device_newton_steps(high: float) -> int:
    """Newton steps off CPU, where testing for convergence would wait for the device each step.

    Measured on 10^6 random and boundary points per pair of log-std bounds: with
    ``log_std_max <= 0`` (``high <= log 2``) eight steps reach 2e-15 nats everywhere, so ten are
    run; a larger ``log_std_max`` lets the entropy saturate at ``log 2``, where Newton slows
    (``log_std_max = 3``: 1.5e-5 nats short after ten, 2e-6 after twelve), so forty are run.
    """
    return 10 if high <= math.log(2.0) + 1e-12 else 40


@torch.no_grad()
def _solve_truncated_log_std(entropy: Tensor, loc: Tensor, high: float) -> Tensor:
    """``log_std`` with ``H_trunc(log_std; loc) = entropy``, elementwise, in float64.

    ``H`` increases strictly with ``sigma`` (``dH/dtheta = -theta Var[(x - loc)^2] < 0`` in the
    exponential-family parameter ``theta = 1 / (2 sigma^2)``). Bracket: a truncated normal has
    variance below ``sigma^2`` and so entropy below the Gaussian's, hence ``H(entropy - log
    sqrt(2 pi e)) <= entropy``; and ``high`` is chosen by the caller with ``H(high) >= entropy``.
    Plain Newton steps from that lower end, kept in the bracket, rise monotonically to the
    root (measured on 10^6 random and boundary points for five pairs of log-std bounds: never
    above it by more than 3e-15 nats, so the floor is not overshot into a too-small sigma
    either). The bisection safeguard this replaces cost up to 40 steps where Newton takes 8.
    On CPU the loop stops when every residual is below 1e-12; off CPU (and under
    ``torch.compile``) it runs :func:`_device_newton_steps`.
    """
    low_end = entropy - _GAUSSIAN_UNIT_ENTROPY
    high_end = torch.full_like(entropy, high)
    log_std = low_end
    early_exit = checks_values(entropy)
    for _ in range(100 if early_exit else _device_newton_steps(high)):
        value, slope = _truncated_entropy_and_slope(log_std, loc)
        residual = value - entropy
        if early_exit and bool((residual.abs() <= 1e-12).all()):
            break
        log_std = torch.minimum(torch.maximum(log_std - residual / slope, low_end), high_end)
    return log_std


class _TruncatedLogStd(torch.autograd.Function):
    """``(entropy, loc) -> log_std`` solving ``H_trunc(log_std; loc) = entropy``; implicit gradient.

    From ``H(log_std(h, m), m) = h``: ``dlog_std/dh = 1 / H_s`` and ``dlog_std/dm = -H_m / H_s``.
    """

    @staticmethod
    def forward(ctx: Any, entropy: Tensor, loc: Tensor, high: float) -> Tensor:  # type: ignore[override]
        h64, m64 = entropy.to(torch.float64), loc.to(torch.float64)
        log_std = _solve_truncated_log_std(h64, m64, high)
        ctx.save_for_backward(log_std, m64)
        ctx.dtypes = entropy.dtype, loc.dtype
        return log_std.to(torch.promote_types(entropy.dtype, loc.dtype))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        log_std, loc = ctx.saved_tensors  # type: ignore[attr-defined]
        _, d_log_std, d_loc = _truncated_entropy_terms(log_std, loc)
        g = grad.to(torch.float64) / d_log_std
        entropy_dtype, loc_dtype = ctx.dtypes
        return g.to(entropy_dtype), (-g * d_loc).to(loc_dtype), None


def truncated_gaussian_era(
    loc: Tensor,
    raw_scale: Tensor,
    target_entropy: float | Tensor,
    log_std_min: float = -8.0,
    log_std_max: float = 0.0,
) -> Tensor:
    """Log-stds whose normals around ``loc``, truncated to ``[-1, 1]``, have entropy >= target.

    This is the ERA floor on the distribution that acts (method.md §1): the budget is spread
    over the ``D`` dims like :func:`gaussian_era`, but in truncated-entropy units,

        ``h_i = max(h_max + (H0 - D h_max) softmax(s)_i, h_min)``,

    with ``[h_min, h_max]`` from :func:`truncated_normal_entropy_bounds` (``h_max < log 2``),
    and each ``sigma_i`` solves ``H_trunc(sigma_i; loc_i) = h_i`` in closed form by a monotone
    1-D root in float64. Without the clip ``sum_i h_i = H0`` exactly; the clip only raises it.
    So the truncated normal's entropy is ``>= H0`` for every state and every ``loc``, with no
    tuner and no bounding bias. Gradients flow to ``loc``, ``raw_scale`` and a tensor target
    (implicit function theorem: the solver is not differentiated through).

    The returned ``log_std`` lies in ``[log_std_min, log_std_max + log 2]``: a ``loc`` at the
    boundary needs up to twice the centred ``sigma`` for the same entropy.

    Args:
        loc: Centres in ``[-1, 1]`` (e.g. ``tanh(mean)``), shape ``(*batch, D)``.
        raw_scale: Raw network output ``s``, shape ``(*batch, D)``.
        target_entropy: ``H0`` in nats over the ``D`` dims, a float or a tensor broadcastable
            to ``batch``; below ``D * h_max``.
        log_std_min: Sets ``h_min``, the entropy of the centred normal with this log-std.
        log_std_max: Sets ``h_max``, likewise.

    Returns:
        ``log_std`` with the shape and dtype of ``raw_scale`` (computed in float64, rounded up).

    Raises:
        TypeError: A non-floating-point input.
        ValueError: ``log_std_min >= log_std_max``, a non-finite target or one at or above
            ``D * h_max``, shapes that differ, or (CPU, eager) ``loc`` outside ``[-1, 1]``.
    """
    check_floating("loc", loc)
    check_floating("raw_scale", raw_scale)
    check_tensor_finite("raw_scale", raw_scale)
    h_min, h_max = truncated_normal_entropy_bounds(log_std_min, log_std_max)
    check_shape("loc", loc.shape, raw_scale.shape, "one centre per entry of raw_scale")
    if raw_scale.dim() == 0:
        raise ValueError(
            "raw_scale must have a last dimension of action dims D, got a 0-dim tensor"
        )
    dim = raw_scale.shape[-1]
    _check_target_entropy(
        target_entropy,
        raw_scale.shape[:-1],
        dim * h_max,
        f"{dim} dims of truncated normals on [-1, 1] with log_std_max={log_std_max:g}",
    )
    if checks_values(loc) and not bool((loc.detach().abs() <= 1.0).all()):
        raise ValueError("loc must lie in [-1, 1] (e.g. tanh of the mean), got NaN or beyond")
    if isinstance(target_entropy, Tensor):  # a half-precision target would round the budget
        target_entropy = target_entropy.to(compute_dtype(raw_scale))
    budget = target_entropy - dim * h_max
    if isinstance(budget, Tensor):
        budget = budget.unsqueeze(-1)
    weights = torch.softmax(raw_scale.to(compute_dtype(raw_scale)), -1)
    entropy = (h_max + budget * weights).clamp(min=h_min)
    # A boundary loc halves the entropy's sigma scale: H(2 sigma; +-1) = H(sigma; 0) >= h.
    out: Tensor = _TruncatedLogStd.apply(entropy, loc, log_std_max + math.log(2.0))  # pyright: ignore[reportUnknownMemberType]
    # The truncated entropy grows with sigma: rounding up keeps the floor in half precision.
    return _round_up_to(out, raw_scale.dtype)
