"""Policy losses of the GRPO family as small pure functions in a registry.

A ``Loss`` has two parts, both pure:

- ``shaping(entropy, advantages, mask, cfg) -> (logit_scale | None, advantages)`` runs once
  per rollout batch on the behaviour policy's token entropies. GRPO-ERA uses it to pick a
  per-token logit scale (method.md §3); the others leave everything unchanged.
- ``objective(terms, cfg) -> (loss, metrics)`` turns per-token log-probs (computed under that
  logit scale, for the current and the behaviour policy) into the scalar to minimise.

``LOSSES[cfg.algo]`` selects one; the trainer holds no per-algorithm branches.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from era_core.functional import response_entropy, token_era_scale
from era_core.validation import check_positive, check_range
from era_llm.config import help_field

__all__ = [
    "LOSSES",
    "Loss",
    "LossConfig",
    "PolicyTerms",
    "aggregate",
    "clip_cov_objective",
    "clipped_surrogate",
    "entropy_bonus_objective",
    "era_shaping",
    "grpo_objective",
    "kl_cov_objective",
    "no_shaping",
    "token_covariance",
]

Algo = Literal["grpo", "grpo-entropy-bonus", "grpo-era", "clip-cov", "kl-cov"]
Aggregation = Literal["token-mean", "seq-mean-token-mean"]


@dataclass(kw_only=True)
class LossConfig:
    """Hyperparameters of the policy losses (the training config extends this)."""

    algo: Algo = help_field(  # noqa: RUF009 (a dataclasses.field)
        "grpo-era",
        "policy loss: grpo (clipped surrogate, DAPO clip-higher), grpo-entropy-bonus "
        "(minus entropy_coef * token entropy), grpo-era (ERA logit scaling for A > 0, "
        "arXiv:2510.08549), clip-cov / kl-cov (Cui et al., arXiv:2505.22617: no gradient, or "
        "a KL penalty, for tokens of high covariance of log-prob and advantage)",
    )
    clip_low: float = help_field(0.2, "ratio clip below: 1 - clip_low (PPO epsilon)")
    clip_high: float = help_field(0.28, "ratio clip above: 1 + clip_high (DAPO clip-higher, 0.28)")
    aggregation: Aggregation = help_field(  # noqa: RUF009 (a dataclasses.field)
        "token-mean",
        "token-mean: every token of the batch weighs the same (DAPO); seq-mean-token-mean: "
        "mean over tokens per response, then over responses (GRPO paper)",
    )
    kl_coef: float = help_field(
        0.0, "weight of the k3 KL estimate to the reference model (0: none)"
    )
    entropy_coef: float = help_field(1e-3, "entropy bonus weight, grpo-entropy-bonus only")
    era_omega_low: float = help_field(
        0.45, "grpo-era: sharpen positive responses below this entropy"
    )
    era_omega_high: float = help_field(
        3.0, "grpo-era: flatten positive responses above this entropy"
    )
    era_k: float = help_field(2.0, "grpo-era: logit scale factor k > 1")
    era_top_frac: float = help_field(0.2, "grpo-era: response entropy = mean of this top fraction")
    era_scale_advantages: bool = help_field(
        False,
        "grpo-era: also divide A by the logit scale (the authors' README equation; their "
        "published runs scale logits only)",
    )
    clip_cov_frac: float = help_field(
        2e-4, "clip-cov: fraction of a micro-batch's tokens whose gradient is dropped (r)"
    )
    clip_cov_low: float = help_field(1.0, "clip-cov: drop only tokens with covariance above this")
    clip_cov_high: float = help_field(5.0, "clip-cov: drop only tokens with covariance below this")
    kl_cov_frac: float = help_field(
        2e-3,
        "kl-cov: fraction of a micro-batch's tokens, largest covariance first, that get the "
        "KL penalty (k; the paper's 7B value, 2e-4 for 32B)",
    )
    kl_cov_coef: float = help_field(1.0, "kl-cov: weight of the |log pi - log pi_old| penalty")

    def __post_init__(self) -> None:
        if self.algo not in LOSSES:
            raise ValueError(f"algo must be one of {sorted(LOSSES)}, got {self.algo!r}")
        check_range("clip_low", self.clip_low, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        check_positive("clip_high", self.clip_high)
        check_range("kl_coef", self.kl_coef, 0.0)
        check_range("entropy_coef", self.entropy_coef, 0.0)
        check_range("era_k", self.era_k, 1.0, low_inclusive=False)
        check_range(
            "era_omega_low",
            self.era_omega_low,
            0.0,
            self.era_omega_high,
            why="and <= era_omega_high",
        )
        check_range("era_top_frac", self.era_top_frac, 0.0, 1.0, low_inclusive=False)
        check_range("clip_cov_frac", self.clip_cov_frac, 0.0, 1.0, low_inclusive=False)
        check_range(
            "clip_cov_low",
            self.clip_cov_low,
            high=self.clip_cov_high,
            high_inclusive=False,
            why="and < clip_cov_high",
        )
        check_range("kl_cov_frac", self.kl_cov_frac, 0.0, 1.0, low_inclusive=False)
        check_range("kl_cov_coef", self.kl_cov_coef, 0.0)


@dataclass(frozen=True)
class PolicyTerms:
    """Per-token inputs of one micro-batch; every tensor has shape ``(batch, seq)``.

    Attributes:
        logprobs: Current policy's log-probs of the sampled tokens (with gradient).
        old_logprobs: Behaviour policy's log-probs, same logit scale, no gradient.
        advantages: Per-token advantages (after shaping).
        mask: 1.0 on response tokens, 0.0 on padding.
        entropy: Current policy's token entropy of the original logits (with gradient).
        ref_logprobs: Reference model's log-probs for the KL term, or ``None``.
        normaliser: The optimiser step's whole-batch count this micro-batch is divided by:
            valid tokens (token-mean) or responses (seq-mean-token-mean), over all
            micro-batches and ranks, so that summing micro-batch losses gives the batch mean.
    """

    logprobs: Tensor
    old_logprobs: Tensor
    advantages: Tensor
    mask: Tensor
    entropy: Tensor
    ref_logprobs: Tensor | None = None
    normaliser: float = 1.0


def aggregate(values: Tensor, mask: Tensor, mode: Aggregation, normaliser: float) -> Tensor:
    """Reduce per-token values to this micro-batch's share of the batch mean.

    Args:
        values: Shape ``(batch, seq)``.
        mask: Shape ``(batch, seq)``, 1.0 on valid tokens.
        mode: ``token-mean`` sums valid tokens; ``seq-mean-token-mean`` sums per-response
            token means.
        normaliser: Batch-wide token or response count (see ``PolicyTerms.normaliser``).
    """
    masked = values * mask
    if mode == "token-mean":
        return masked.sum() / normaliser
    return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / normaliser


def clipped_surrogate(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_low: float, clip_high: float
) -> tuple[Tensor, Tensor]:
    """Per-token PPO loss ``-min(r A, clip(r, 1 - clip_low, 1 + clip_high) A)``, ``r = pi/pi_old``.

    Returns:
        ``(loss, clipped)``: the loss and a bool tensor marking tokens where the clipped
        branch is the active one (their gradient is zero).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def _reference_kl(terms: PolicyTerms, cfg: LossConfig) -> tuple[Tensor | float, dict[str, Tensor]]:
    """``kl_coef`` times the per-token k3 estimate of KL(pi || pi_ref), and its metric."""
    if cfg.kl_coef == 0:
        return 0.0, {}
    if terms.ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs")
    # k3 estimator of KL(pi || pi_ref): unbiased, non-negative per token (Schulman 2020).
    log_ratio = terms.ref_logprobs - terms.logprobs
    kl = torch.exp(log_ratio) - log_ratio - 1.0
    return cfg.kl_coef * kl, {"kl": (kl * terms.mask).sum().detach()}


def _policy_token_loss(terms: PolicyTerms, cfg: LossConfig) -> tuple[Tensor, dict[str, Tensor]]:
    loss, clipped = clipped_surrogate(
        terms.logprobs, terms.old_logprobs, terms.advantages, cfg.clip_low, cfg.clip_high
    )
    kl, kl_metrics = _reference_kl(terms, cfg)
    return loss + kl, {"clip_frac": (clipped * terms.mask).sum().detach(), **kl_metrics}


def grpo_objective(terms: PolicyTerms, cfg: LossConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate (+ optional KL), aggregated by ``cfg.aggregation``.

    Returns:
        ``(loss, metrics)``; metric values are sums over this micro-batch's valid tokens.
    """
    token_loss, metrics = _policy_token_loss(terms, cfg)
    return aggregate(token_loss, terms.mask, cfg.aggregation, terms.normaliser), metrics


def entropy_bonus_objective(
    terms: PolicyTerms, cfg: LossConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO minus ``entropy_coef`` times the token entropy: the classic entropy regulariser."""
    token_loss, metrics = _policy_token_loss(terms, cfg)
    token_loss = token_loss - cfg.entropy_coef * terms.entropy
    return aggregate(token_loss, terms.mask, cfg.aggregation, terms.normaliser), metrics


def token_covariance(logprobs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """Each token's term of the covariance of log-prob and advantage over the valid tokens.

    ``(A - mean A) (log pi - mean log pi)``, means over ``mask``: Cui et al. (2025) show the
    entropy change is driven by this covariance, so its largest terms are the tokens that
    collapse entropy. No gradient; padding gets 0.
    """
    count = mask.sum().clamp(min=1)
    logprobs = logprobs.detach()
    mean_adv = (advantages * mask).sum() / count
    mean_logp = (logprobs * mask).sum() / count
    return (advantages - mean_adv) * (logprobs - mean_logp) * mask


def clip_cov_objective(terms: PolicyTerms, cfg: LossConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """Clip-Cov (Cui et al., arXiv:2505.22617): GRPO without a few high-covariance tokens.

    Of the valid tokens whose ratio is not already clipped and whose ``token_covariance``
    lies in ``(clip_cov_low, clip_cov_high)``, ``max(1, int(clip_cov_frac * valid tokens))``
    drawn at random (torch's global generator, so a resumed run draws the same) have their
    surrogate term, value and gradient, set to 0; they stay in the normaliser. The KL term,
    if any, is kept on every token.
    """
    surrogate, clipped = clipped_surrogate(
        terms.logprobs, terms.old_logprobs, terms.advantages, cfg.clip_low, cfg.clip_high
    )
    valid = terms.mask > 0
    cov = token_covariance(terms.logprobs, terms.advantages, terms.mask)
    eligible = valid & ~clipped & (cov > cfg.clip_cov_low) & (cov < cfg.clip_cov_high)
    candidates = eligible.flatten().nonzero().squeeze(1)
    count = max(int(cfg.clip_cov_frac * valid.sum().item()), 1)
    drawn = torch.randperm(candidates.numel())[:count].to(candidates.device)
    keep = torch.ones_like(surrogate).flatten().index_fill(0, candidates[drawn], 0.0)
    kl, kl_metrics = _reference_kl(terms, cfg)
    token_loss = surrogate * keep.view_as(surrogate) + kl
    metrics = {
        "clip_frac": (clipped * terms.mask).sum().detach(),
        "clip_cov_frac": torch.tensor(float(drawn.numel())),
        **kl_metrics,
    }
    return aggregate(token_loss, terms.mask, cfg.aggregation, terms.normaliser), metrics


def kl_cov_objective(terms: PolicyTerms, cfg: LossConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """KL-Cov (Cui et al., arXiv:2505.22617): ``-r A`` plus a KL penalty on top-covariance tokens.

    The penalty is ``kl_cov_coef * |log pi - log pi_old|``; the ``max(1, int(kl_cov_frac * valid tokens))`` valid tokens with the largest
    ``token_covariance`` get the penalty. As in the authors' code no ratio clipping applies
    (``clip_low``/``clip_high`` are unused). On-policy (``num_minibatches=1``) the penalty
    is ``|0|`` with zero gradient, so KL-Cov acts only from a batch's second optimiser step.
    """
    log_ratio = terms.logprobs - terms.old_logprobs
    token_loss = -terms.advantages * torch.exp(log_ratio)
    valid = terms.mask.flatten() > 0
    cov = token_covariance(terms.logprobs, terms.advantages, terms.mask).flatten()
    penalised = torch.zeros_like(valid)
    if valid.any():
        count = min(max(int(cfg.kl_cov_frac * valid.sum().item()), 1), int(valid.sum().item()))
        top = cov.masked_fill(~valid, -torch.inf).topk(count).indices
        penalised = penalised.index_fill(0, top, True)
    penalised = penalised.view_as(token_loss)
    kl, kl_metrics = _reference_kl(terms, cfg)
    token_loss = token_loss + cfg.kl_cov_coef * log_ratio.abs() * penalised + kl
    metrics = {"kl_cov_frac": penalised.sum().float().detach(), **kl_metrics}
    return aggregate(token_loss, terms.mask, cfg.aggregation, terms.normaliser), metrics


Shaping = Callable[[Tensor, Tensor, Tensor, LossConfig], tuple[Tensor | None, Tensor]]


def no_shaping(
    entropy: Tensor, advantages: Tensor, mask: Tensor, cfg: LossConfig
) -> tuple[Tensor | None, Tensor]:
    """Leave logits (scale ``None``) and advantages as they are."""
    return None, advantages


def era_shaping(
    entropy: Tensor, advantages: Tensor, mask: Tensor, cfg: LossConfig
) -> tuple[Tensor | None, Tensor]:
    """ERA for LLMs (method.md §3): per-token logit scale and rescaled advantages.

    ``H_resp`` is the mean of each response's top ``era_top_frac`` token entropies of the
    original logits; for tokens with ``A > 0`` it scales logits by ``k`` (``H_resp <
    omega_low``) or ``1/k`` (``H_resp > omega_high``) and divides ``A`` by the same factor.

    Args:
        entropy: Behaviour policy's token entropies, shape ``(batch, seq)``.
        advantages: Shape ``(batch, seq)``.
        mask: Valid-token mask, shape ``(batch, seq)``.
        cfg: Thresholds and factor.

    Returns:
        ``(logit_scale, advantages)``, both ``(batch, seq)``.
    """
    h_resp = response_entropy(entropy, mask, cfg.era_top_frac)
    return token_era_scale(
        h_resp,
        advantages,
        cfg.era_omega_low,
        cfg.era_omega_high,
        cfg.era_k,
        cfg.era_scale_advantages,
    )


@dataclass(frozen=True)
class Loss:
    """A registry entry: advantage/logit shaping plus the objective."""

    objective: Callable[[PolicyTerms, LossConfig], tuple[Tensor, dict[str, Tensor]]]
    shaping: Shaping = no_shaping

    @property
    def shapes(self) -> bool:
        """Whether ``shaping`` needs the behaviour policy's token entropies."""
        return self.shaping is not no_shaping


LOSSES: dict[str, Loss] = {
    "grpo": Loss(grpo_objective),
    "grpo-entropy-bonus": Loss(entropy_bonus_objective),
    "grpo-era": Loss(grpo_objective, era_shaping),
    "clip-cov": Loss(clip_cov_objective),
    "kl-cov": Loss(kl_cov_objective),
}
