"""Entropies, memory-lean log-prob/entropy passes for large vocabularies, and bounded-action helpers.

dtypes and checks follow the rules in ``era_core.functional``'s module docstring.
"""

import math
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints
from torch.distributions.utils import broadcast_all

from era_core.validation import (
    check_dim,
    check_finite,
    check_floating,
    check_range,
    check_shape,
    compute_dtype,
)

__all__ = [
    "DeltaTuner",
    "TruncatedNormal",
    "categorical_entropy",
    "gaussian_entropy",
    "linear_logprobs_and_entropy",
    "logprobs_and_entropy",
    "tanh_gaussian_entropy",
    "topk_logprobs",
]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_GAUSSIAN_UNIT_ENTROPY = 0.5 + _LOG_SQRT_2PI
# Auto chunk size: about 256 MiB of float32 logits per chunk.
_CHUNK_ELEMENTS = 1 << 26


def gaussian_entropy(log_std: Tensor) -> Tensor:
    """Entropy of a diagonal Gaussian, ``sum_i (log sigma_i + log sqrt(2*pi*e))``.

    Shape: ``(*batch, D) -> (*batch,)``.
    """
    check_floating("log_std", log_std)
    return (log_std + _GAUSSIAN_UNIT_ENTROPY).sum(-1)


def tanh_gaussian_entropy(
    mean: Tensor, log_std: Tensor, num_samples: int = 1, generator: torch.Generator | None = None
) -> Tensor:
    """Monte-Carlo estimate of the entropy of ``tanh(u)``, ``u ~ N(mean, diag(exp(log_std))^2)``.

    ``H[tanh(u)] = H[u] + E[sum_i log(1 - tanh(u_i)^2)]``; the expectation is estimated with
    reparametrised samples, so the estimate is differentiable.

    Shape: ``(*batch, D) -> (*batch,)``.
    """
    check_floating("mean", mean)
    check_floating("log_std", log_std)
    check_range("num_samples", num_samples, 1)
    shape = cast(torch.Size, torch.broadcast_shapes(mean.shape, log_std.shape))  # pyright: ignore[reportUnknownMemberType]
    noise = torch.randn(
        (num_samples, *shape), dtype=mean.dtype, device=mean.device, generator=generator
    )
    u = mean + log_std.exp() * noise
    # log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)), stable for large |u|.
    log_det = 2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u))
    return gaussian_entropy(log_std.expand(shape)) + log_det.sum(-1).mean(0)


class TruncatedNormal(Distribution):
    """Normal ``N(loc, scale^2)`` truncated to ``[low, high]``, with ``rsample``.

    The authors' SAC-ERA samples actions from this distribution around ``tanh(mu)`` on
    ``[-1, 1]``; unlike a tanh-squashed Gaussian its entropy has a closed form.
    Intervals in the upper tail are sampled through the mirrored lower tail, where the
    normal CDF keeps its precision.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}  # type: ignore[assignment]  # noqa: RUF012
    has_rsample = True

    def __init__(
        self,
        loc: Tensor | float,
        scale: Tensor | float,
        low: float = -1.0,
        high: float = 1.0,
        validate_args: bool | None = None,
    ) -> None:
        check_range(
            "low", low, None, high, high_inclusive=False, why=f"must be below high={high:g}"
        )
        for name, value in (("loc", loc), ("scale", scale)):
            if isinstance(value, Tensor):
                check_floating(name, value)
        broadcast: tuple[Tensor, Tensor] = broadcast_all(loc, scale)  # pyright: ignore[reportAssignmentType]
        self.loc, self.scale = broadcast
        self.low, self.high = low, high
        alpha, beta = (low - self.loc) / self.scale, (high - self.loc) / self.scale
        self._alpha, self._beta = alpha, beta
        self._flip = alpha > 0
        self._lo = torch.where(self._flip, -beta, alpha)
        self._hi = torch.where(self._flip, -alpha, beta)
        self._cdf_lo = std_normal_cdf(self._lo)
        self._mass = std_normal_cdf(self._hi) - self._cdf_lo
        self._log_mass = torch.log(self._mass)
        super().__init__(self.loc.shape, validate_args=validate_args)

    @constraints.dependent_property
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        """The interval ``[low, high]``."""
        return constraints.interval(self.low, self.high)

    @property
    def mean(self) -> Tensor:
        """``loc + scale * (phi(alpha) - phi(beta)) / Z``."""
        return (
            self.loc
            + self.scale * (std_normal_pdf(self._alpha) - std_normal_pdf(self._beta)) / self._mass
        )

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:  # type: ignore[override]
        """Reparametrised sample by the inverse CDF."""
        shape = self._extended_shape(torch.Size(sample_shape))
        return self.icdf(torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device))

    def icdf(self, value: Tensor) -> Tensor:
        """The quantile at ``value`` in ``[0, 1]``; differentiable in ``loc`` and ``scale``.

        Feeding it uniform noise from your own generator gives a reparametrised sample.
        """
        # Mirrored intervals count their quantile from the other end.
        value = torch.where(self._flip, 1.0 - value, value)
        # Keep the quantile strictly inside (0, 1): ndtri(0) = -inf.
        tiny = torch.finfo(self.loc.dtype).tiny
        standard = _ndtri((self._cdf_lo + value * self._mass).clamp(min=tiny, max=1 - 1e-7))
        standard = torch.where(self._flip, -standard, standard)
        return (self.loc + self.scale * standard).clamp(self.low, self.high)

    def log_prob(self, value: Tensor) -> Tensor:
        """Log-density; ``-inf`` outside ``[low, high]``."""
        if self._validate_args:
            self._validate_sample(value)
        z = (value - self.loc) / self.scale
        log_p = -0.5 * z**2 - _LOG_SQRT_2PI - torch.log(self.scale) - self._log_mass
        inside = (value >= self.low) & (value <= self.high)
        return torch.where(inside, log_p, -math.inf)

    def entropy(self) -> Tensor:
        """Closed form: ``log(sqrt(2*pi*e) * scale * Z) + (alpha*phi(alpha) - beta*phi(beta)) / (2Z)``."""
        tail = self._alpha * std_normal_pdf(self._alpha) - self._beta * std_normal_pdf(self._beta)
        return (
            _GAUSSIAN_UNIT_ENTROPY
            + torch.log(self.scale)
            + self._log_mass
            + tail / (2 * self._mass)
        )


def std_normal_cdf(x: Tensor) -> Tensor:
    """Phi(x), the standard normal CDF (shared with ``functional``'s truncated-normal floor)."""
    return cast(Tensor, torch.special.ndtr(x))  # pyright: ignore[reportUnknownMemberType]


def _ndtri(p: Tensor) -> Tensor:
    return cast(Tensor, torch.special.ndtri(p))  # pyright: ignore[reportUnknownMemberType]


def std_normal_pdf(x: Tensor) -> Tensor:
    """phi(x), the standard normal density."""
    return torch.exp(-0.5 * x**2 - _LOG_SQRT_2PI)


class DeltaTuner(nn.Module):
    """The bounding-bias compensation ``delta >= 0`` of method.md §1.

    ERA targets ``H0 + delta`` so that the executed (squashed or truncated) policy reaches
    ``H0``. With ``learnable=True``, ``delta = exp(log_delta)`` is learnt by minimising
    ``loss(entropy) = delta * (H - H0)``: it grows while the real entropy is below ``H0``
    and shrinks above it. With ``learnable=False`` it stays ``init_delta``.

    Args:
        target_entropy: ``H0``, the entropy the executed policy should keep.
        init_delta: Starting (or constant) delta; ``> 0`` when learnable.
        learnable: Learn delta (minimise ``loss`` with an optimiser over ``parameters()``).
        batch_shape: One independent delta per ensemble member, e.g. ``(num_seeds,)``.
        max_delta: Largest allowed delta, e.g. what keeps ``H0 + delta`` below the
            Gaussian's maximum entropy; ``clamp_`` projects a learnt delta back under it.
    """

    def __init__(
        self,
        target_entropy: float,
        init_delta: float = 0.0,
        learnable: bool = False,
        batch_shape: tuple[int, ...] = (),
        max_delta: float | None = None,
    ) -> None:
        super().__init__()
        check_finite("target_entropy", target_entropy)
        if max_delta is not None:
            check_range("max_delta", max_delta, 0.0)
        check_range(
            "init_delta",
            init_delta,
            0.0,
            max_delta,
            low_inclusive=not learnable,
            why="learnt as log(delta)" if learnable else "",
        )
        self.target_entropy = float(target_entropy)
        self.learnable, self.max_delta = learnable, max_delta
        value = torch.full(batch_shape, float(init_delta))
        if learnable:
            self.log_delta = nn.Parameter(value.log())
        else:
            self.register_buffer("constant_delta", value)

    @property
    def delta(self) -> Tensor:
        """Current delta, shape ``batch_shape``; carries gradient when learnable."""
        return self.log_delta.exp() if self.learnable else self.get_buffer("constant_delta")

    @property
    def era_target(self) -> Tensor:
        """``H0 + delta``, detached: the target to hand to the ERA activation."""
        return (self.target_entropy + self.delta).detach()

    @torch.no_grad()
    def clamp_(self) -> None:
        """Project a learnt delta back under ``max_delta``; call it after each optimiser step."""
        if self.learnable and self.max_delta is not None:
            self.log_delta.clamp_(max=math.log(self.max_delta))

    def loss(self, entropy: Tensor) -> Tensor:
        """``sum over members of delta * mean(H - H0)``; ``entropy`` is detached here.

        Args:
            entropy: Estimated policy entropy, shape ``(*batch_shape, *samples)``; sample
                dimensions are averaged, members are summed (so a member's gradient does
                not depend on the ensemble size).
        """
        check_floating("entropy", entropy)
        gap = entropy.detach() - self.target_entropy
        gap = gap.reshape(*self.delta.shape, -1).mean(-1)
        return (self.delta * gap).sum()

    def extra_repr(self) -> str:
        """Constructor arguments, for ``print(model)``."""
        return f"target_entropy={self.target_entropy:g}, learnable={self.learnable}"


# --------------------------------------------------------------------------- categorical


def _softmax_terms(z: Tensor, lse: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``log p``, ``p`` and the row log-sum-exp of logits, in float32 or higher.

    ``-inf`` logits are masked classes: their ``log p`` is clamped to the dtype's lowest
    finite value, so ``p * log p`` and the gradients stay 0 instead of NaN. Passing the
    forward pass's ``lse`` skips the reduction in the backward recomputation.
    """
    z = z.to(compute_dtype(z))
    if lse is None:
        lse = torch.logsumexp(z, dim=-1)
    log_p = (z - lse.unsqueeze(-1)).clamp_(min=torch.finfo(z.dtype).min)
    return log_p, log_p.exp(), lse


def _entropy(log_p: Tensor, p: Tensor) -> Tensor:
    return -(p * log_p).sum(-1)


def categorical_entropy(logits: Tensor, dim: int = -1, chunk_size: int | None = None) -> Tensor:
    """Entropy of ``softmax(logits)`` along ``dim``, computed in float32.

    Classes with logit ``-inf`` count as probability 0. With ``chunk_size``, rows are
    processed ``chunk_size`` at a time forward and backward, so at most one chunk of float32
    probabilities exists (use it for large vocabularies).

    Shape: ``(..., D, ...) -> (...)`` with ``dim`` removed, ``D >= 1``; float32 (float64
    stays float64).
    """
    check_floating("logits", logits)
    dim = check_dim("dim", dim, logits.dim())
    if logits.shape[dim] == 0:
        raise ValueError(
            f"logits must have at least one class along dim={dim}, got shape {tuple(logits.shape)}"
        )
    z = logits.movedim(dim, -1)
    if chunk_size is None:
        log_p, p, _ = _softmax_terms(z)
        return _entropy(log_p, p)
    labels = torch.zeros(z.shape[:-1], dtype=torch.long, device=z.device)
    return logprobs_and_entropy(z, labels, chunk_size)[1]


def _rows(grad: Tensor | None, rows: slice) -> Tensor | None:
    return None if grad is None else grad[rows]


def _auto_chunk(vocab: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return max(1, _CHUNK_ELEMENTS // vocab)
    check_range("chunk_size", chunk_size, 1)
    return int(chunk_size)


def _logprob_entropy_grad(
    log_p: Tensor,
    p: Tensor,
    entropy: Tensor,
    labels: Tensor,
    grad_logprob: Tensor | None,
    grad_entropy: Tensor | None,
) -> Tensor:
    """Gradient w.r.t. logits of ``log p[label]`` and entropy, both from the same softmax.

    ``d log p_y / dz = onehot(y) - p``; ``dH / dz_j = -p_j (log p_j + H)``. A ``None``
    gradient (that output is unused, e.g. an entropy only logged) skips its terms.
    """
    grad = torch.zeros_like(p)
    if grad_entropy is not None:
        grad.addcmul_(p, log_p + entropy.unsqueeze(-1), value=-1.0).mul_(grad_entropy.unsqueeze(-1))
    if grad_logprob is not None:
        g_lp = grad_logprob.unsqueeze(-1)
        grad.addcmul_(p, g_lp, value=-1.0).scatter_add_(-1, labels.unsqueeze(-1), g_lp)
    return grad


class _ChunkedLogprobEntropy(torch.autograd.Function):
    """Per-row log-prob of a label and entropy; backward recomputes the softmax chunk by chunk."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, labels: Tensor, chunk: int) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        logprobs = torch.empty(labels.shape, dtype=compute_dtype(logits), device=logits.device)
        entropy, lse = torch.empty_like(logprobs), torch.empty_like(logprobs)
        for start in range(0, labels.shape[0], chunk):
            rows = slice(start, start + chunk)
            log_p, p, lse[rows] = _softmax_terms(logits[rows])
            entropy[rows] = _entropy(log_p, p)
            logprobs[rows] = log_p.gather(-1, labels[rows].unsqueeze(-1)).squeeze(-1)
        ctx.save_for_backward(logits, labels, entropy, lse)
        ctx.chunk = chunk
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None
        return logprobs, entropy

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_logprob: Tensor | None, grad_entropy: Tensor | None
    ) -> tuple[Tensor | None, None, None]:
        logits, labels, entropy, lse = ctx.saved_tensors
        if grad_logprob is None and grad_entropy is None:
            return None, None, None
        grad = torch.empty_like(logits)
        for start in range(0, labels.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            log_p, p, _ = _softmax_terms(logits[rows], lse[rows])
            grad[rows] = _logprob_entropy_grad(
                log_p,
                p,
                entropy[rows],
                labels[rows],
                _rows(grad_logprob, rows),
                _rows(grad_entropy, rows),
            )
        return grad, None, None


def _check_logits_and_labels(name: str, logits: Tensor, labels: Tensor) -> None:
    """``logits`` (or hidden states) ``(..., n)`` floating with ``n >= 1``; integer ``labels`` ``(...)``."""
    check_floating(name, logits)
    if logits.dim() == 0 or logits.shape[-1] == 0:
        raise ValueError(
            f"{name} must have a non-empty last dimension, got shape {tuple(logits.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    check_shape(
        "labels", labels.shape, logits.shape[:-1], f"the shape of {name} without its last dim"
    )


def logprobs_and_entropy(
    logits: Tensor, labels: Tensor, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Log-probability of ``labels`` and entropy under ``softmax(logits)``, chunk by chunk.

    Never holds more than one chunk of float32 ``[tokens, vocab]``: the backward pass
    recomputes the softmax per chunk instead of saving it. Gradients flow to ``logits``
    from both outputs.

    Args:
        logits: Shape ``(..., vocab)``, any float dtype, ``vocab >= 1``.
        labels: Shape ``(...)``, integer indices in ``[0, vocab)``.
        chunk_size: Rows (tokens) per chunk; ``None`` picks about 256 MiB of float32 per chunk.

    Returns:
        ``(logprobs, entropy)``, float32 (float64 for float64 inputs), shape ``(...)``.
    """
    _check_logits_and_labels("logits", logits, labels)
    vocab = logits.shape[-1]
    chunk = _auto_chunk(vocab, chunk_size)
    flat_logits, flat_labels = logits.reshape(-1, vocab), labels.reshape(-1)
    logprobs, entropy = _ChunkedLogprobEntropy.apply(flat_logits, flat_labels, chunk)
    return logprobs.reshape(labels.shape), entropy.reshape(labels.shape)


class _LinearLogprobEntropy(torch.autograd.Function):
    """``logits = hidden @ weight.T`` built chunk by chunk; never stored, recomputed in backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: Tensor, weight: Tensor, labels: Tensor, scale: Tensor | None, chunk: int
    ) -> tuple[Tensor, Tensor]:
        logprobs = torch.empty(labels.shape, dtype=compute_dtype(hidden), device=hidden.device)
        entropy, lse, scaled_lse = (torch.empty_like(logprobs) for _ in range(3))
        for start in range(0, labels.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = hidden[rows] @ weight.T
            log_p, p, lse[rows] = _softmax_terms(logits)
            entropy[rows] = _entropy(log_p, p)
            if scale is not None:
                log_p, _, scaled_lse[rows] = _softmax_terms(
                    logits.to(scale.dtype) * scale[rows, None]
                )
            logprobs[rows] = log_p.gather(-1, labels[rows].unsqueeze(-1)).squeeze(-1)
        ctx.save_for_backward(hidden, weight, labels, scale, entropy, lse, scaled_lse)
        ctx.chunk = chunk
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None
        return logprobs, entropy

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_logprob: Tensor | None, grad_entropy: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        hidden, weight, labels, scale, entropy, lse, scaled_lse = ctx.saved_tensors
        if grad_logprob is None and grad_entropy is None:
            return None, None, None, None, None
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        # Accumulate the weight gradient over chunks in float32 (or float64), cast once at the end.
        wants_weight = ctx.needs_input_grad[1]
        grad_weight = (
            torch.zeros_like(weight, dtype=compute_dtype(weight)) if wants_weight else None
        )
        for start in range(0, labels.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            g_lp, g_h = _rows(grad_logprob, rows), _rows(grad_entropy, rows)
            logits = hidden[rows] @ weight.T
            if scale is None:
                log_p, p, _ = _softmax_terms(logits, lse[rows])
                grad = _logprob_entropy_grad(log_p, p, entropy[rows], labels[rows], g_lp, g_h)
            else:
                # Log-prob of the scaled logits (dz'/dz = scale), entropy of the original ones:
                # each softmax is recomputed only if its output is used.
                s = scale[rows, None]
                grad = None  # at least one of the two terms is used (checked above)
                if g_lp is not None:
                    log_q, q, _ = _softmax_terms(logits.to(s.dtype) * s, scaled_lse[rows])
                    grad = _logprob_entropy_grad(
                        log_q, q, entropy[rows], labels[rows], g_lp, None
                    ).mul_(s)
                if g_h is not None:
                    log_p, p, _ = _softmax_terms(logits, lse[rows])
                    term = _logprob_entropy_grad(log_p, p, entropy[rows], labels[rows], None, g_h)
                    grad = term if grad is None else grad.add_(term)
                assert grad is not None
            if grad_hidden is not None:
                grad_hidden[rows] = grad.to(weight.dtype) @ weight
            if grad_weight is not None:
                grad_weight.addmm_(grad.T, hidden[rows].to(grad.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def linear_logprobs_and_entropy(
    hidden: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    chunk_size: int | None = None,
    logit_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Log-probs and entropies from last hidden states without ever building full logits.

    Per chunk of tokens: ``z = hidden @ lm_head_weight.T``; entropy of ``softmax(z)``;
    log-prob of ``labels`` under ``softmax(logit_scale * z)`` (the ERA k-factor or an
    inverse temperature; treated as a constant). Backward recomputes each chunk's logits and
    gives exact gradients for ``hidden`` and ``lm_head_weight``.

    Args:
        hidden: Shape ``(..., d)``, floating point.
        lm_head_weight: Shape ``(vocab, d)``, same dtype as ``hidden``.
        labels: Shape ``(...)``, integer.
        chunk_size: Tokens per chunk; ``None`` picks about 256 MiB of float32 logits per chunk.
        logit_scale: Optional per-token scale, shape ``(...)``, floating point; no gradient
            flows into it.

    Returns:
        ``(logprobs, entropy)``, float32 (float64 for float64 inputs), shape ``(...)``.
    """
    _check_logits_and_labels("hidden", hidden, labels)
    check_floating("lm_head_weight", lm_head_weight)
    if lm_head_weight.dim() != 2:
        raise ValueError(
            f"lm_head_weight must have shape (vocab, d), got {tuple(lm_head_weight.shape)}"
        )
    if logit_scale is not None:
        check_floating("logit_scale", logit_scale)
        check_shape("logit_scale", logit_scale.shape, labels.shape, "one scale per token")
    vocab, width = lm_head_weight.shape
    if hidden.shape[-1] != width:
        raise ValueError(
            f"hidden's last dim ({hidden.shape[-1]}) must equal lm_head_weight's ({width})"
        )
    chunk = _auto_chunk(vocab, chunk_size)
    scale = (
        None if logit_scale is None else logit_scale.detach().reshape(-1).to(compute_dtype(hidden))
    )
    logprobs, entropy = _LinearLogprobEntropy.apply(
        hidden.reshape(-1, width), lm_head_weight, labels.reshape(-1), scale, chunk
    )
    return logprobs.reshape(labels.shape), entropy.reshape(labels.shape)


def topk_logprobs(
    logits: Tensor,
    labels: Tensor,
    k: int = 20,
    outside: Literal["renormalise", "mask"] = "renormalise",
) -> Tensor:
    """Log-probability of ``labels`` over the ``k`` largest logits.

    A label inside the top ``k`` gets its log-softmax over those ``k`` logits. A label
    outside them is handled by ``outside``:

    - ``"renormalise"`` (the default, this function's original behaviour): the label joins
      the normalising set, so the result is finite, ``<= 0``, and has a gradient;
    - ``"mask"`` (what the ERA authors' code does): the result is the constant ``-1e4``,
      with no gradient.

    Shape: ``(..., vocab), (...) -> (...)``, float32 (float64 stays float64); integer labels.
    """
    _check_logits_and_labels("logits", logits, labels)
    check_range("k", k, 1, logits.shape[-1])
    if outside not in ("renormalise", "mask"):
        raise ValueError(f"outside must be 'renormalise' or 'mask', got {outside!r}")
    top_values, top_index = logits.topk(k, dim=-1)
    label_logit = logits.gather(-1, labels.unsqueeze(-1)).to(compute_dtype(logits))
    outside_top = (top_index != labels.unsqueeze(-1)).all(-1, keepdim=True)
    if outside == "mask":
        inside = label_logit - torch.logsumexp(top_values.to(label_logit.dtype), -1, keepdim=True)
        return torch.where(outside_top, -1e4, inside).squeeze(-1)
    extra = label_logit.masked_fill(~outside_top, -math.inf)
    normaliser = torch.logsumexp(torch.cat([top_values.to(extra.dtype), extra], dim=-1), dim=-1)
    return label_logit.squeeze(-1) - normaliser
