import math
import typing

import pytest
import torch

from era_llm.losses import (
    LOSSES,
    LossConfig,
    PolicyTerms,
    aggregate,
    clipped_surrogate,
    era_shaping,
    no_shaping,
    token_covariance,
)


def test_registry_matches_the_config_choices():
    choices = typing.get_args(typing.get_type_hints(LossConfig)["algo"])
    assert set(choices) == set(LOSSES)


def test_clipped_surrogate_hand_computed():
    # ratios 0.5, 1.1, 1.5 against clip range [0.8, 1.28]
    old = torch.zeros(3)
    logprobs = torch.log(torch.tensor([0.5, 1.1, 1.5])).requires_grad_()
    advantages = torch.tensor([1.0, 1.0, 1.0])
    loss, clipped = clipped_surrogate(logprobs, old, advantages, clip_low=0.2, clip_high=0.28)
    # A > 0: -min(r, clip(r)) A; r = 0.5 -> -0.5 (unclipped, min picks r); r = 1.5 -> -1.28 (clipped)
    torch.testing.assert_close(loss, torch.tensor([-0.5, -1.1, -1.28]))
    assert clipped.tolist() == [False, False, True]
    loss.sum().backward()
    # d(-r A)/d logp = -r A where unclipped; 0 where the clip is active
    torch.testing.assert_close(logprobs.grad, torch.tensor([-0.5, -1.1, 0.0]))


def test_clipped_surrogate_negative_advantage_clips_below():
    old = torch.zeros(2)
    logprobs = torch.log(torch.tensor([0.5, 1.5]))
    loss, clipped = clipped_surrogate(logprobs, old, torch.tensor([-2.0, -2.0]), 0.2, 0.28)
    # A < 0: max(-r A, -clip(r) A): r = 0.5 -> max(1.0, 1.6) = 1.6 (clipped); r = 1.5 -> 3.0
    torch.testing.assert_close(loss, torch.tensor([1.6, 3.0]))
    assert clipped.tolist() == [True, False]


def test_aggregation_modes():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # token-mean: (1 + 2 + 3 + 4) / 4 tokens
    assert aggregate(values, mask, "token-mean", 4.0).item() == pytest.approx(2.5)
    # seq-mean-token-mean: (mean(1, 2, 3) + mean(4)) / 2 responses
    assert aggregate(values, mask, "seq-mean-token-mean", 2.0).item() == pytest.approx(3.0)


def _terms(**overrides):
    base = dict(
        logprobs=torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.5]])),
        old_logprobs=torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.5]])),
        advantages=torch.tensor([[1.0, 1.0], [-1.0, -1.0]]),
        mask=torch.tensor([[1.0, 1.0], [1.0, 0.0]]),
        entropy=torch.tensor([[0.5, 1.0], [2.0, 9.0]]),
        normaliser=3.0,
    )
    return PolicyTerms(**(base | overrides))


def test_grpo_on_policy_loss_is_minus_mean_advantage():
    loss, metrics = LOSSES["grpo"].objective(_terms(), LossConfig(algo="grpo"))
    # ratio 1 everywhere: tokens -1, -1, +1 -> sum / 3
    assert loss.item() == pytest.approx(-1.0 / 3.0)
    assert metrics["clip_frac"].item() == 0.0


def test_kl_term_is_k3_estimate():
    ref = torch.log(torch.tensor([[0.25, 0.25], [0.5, 0.5]]))
    cfg = LossConfig(algo="grpo", kl_coef=0.5)
    loss, metrics = LOSSES["grpo"].objective(_terms(ref_logprobs=ref), cfg)
    # token 0: log_ratio = log(0.25 / 0.5) = -log 2: exp(-log 2) + log 2 - 1 = log 2 - 0.5
    kl0 = torch.log(torch.tensor(2.0)).item() - 0.5
    assert metrics["kl"].item() == pytest.approx(kl0)
    assert loss.item() == pytest.approx((-1.0 + 0.5 * kl0 - 1.0 + 1.0) / 3.0)


def test_kl_needs_reference_logprobs():
    with pytest.raises(ValueError, match="ref_logprobs"):
        LOSSES["grpo"].objective(_terms(), LossConfig(algo="grpo", kl_coef=0.1))


def test_entropy_bonus_subtracts_scaled_entropy_and_pushes_it_up():
    entropy = torch.tensor([[0.5, 1.0], [2.0, 9.0]], requires_grad=True)
    cfg = LossConfig(algo="grpo-entropy-bonus", entropy_coef=0.1)
    loss, _ = LOSSES["grpo-entropy-bonus"].objective(_terms(entropy=entropy), cfg)
    # masked entropy sum 3.5 (the padded 9.0 is ignored)
    assert loss.item() == pytest.approx((-1.0 - 0.1 * 3.5) / 3.0)
    loss.backward()
    torch.testing.assert_close(entropy.grad, torch.tensor([[-0.1, -0.1], [-0.1, 0.0]]) / 3.0)


@pytest.mark.parametrize("scale_advantages", [False, True])
def test_era_shaping_branches(scale_advantages):
    cfg = LossConfig(
        algo="grpo-era",
        era_omega_low=0.5,
        era_omega_high=2.0,
        era_k=2.0,
        era_top_frac=1.0,
        era_scale_advantages=scale_advantages,
    )
    # response entropies (top_frac=1: plain mean): 0.1 (low), 3.0 (high), 1.0 (band), 0.1 (low, A < 0)
    entropy = torch.tensor([[0.1, 0.1], [3.0, 3.0], [1.0, 1.0], [0.1, 0.1]])
    mask = torch.ones(4, 2)
    advantages = torch.tensor([[2.0, 2.0], [2.0, 2.0], [2.0, 2.0], [-2.0, -2.0]])
    scale, shaped = era_shaping(entropy, advantages, mask, cfg)
    torch.testing.assert_close(
        scale, torch.tensor([[2.0, 2.0], [0.5, 0.5], [1.0, 1.0], [1.0, 1.0]])
    )
    # The authors' README rule divides A by the scale; their published runs (the default)
    # leave A as it is.
    want = [[1.0, 1.0], [4.0, 4.0]] if scale_advantages else [[2.0, 2.0], [2.0, 2.0]]
    torch.testing.assert_close(shaped, torch.tensor([*want, [2.0, 2.0], [-2.0, -2.0]]))


def test_era_shaping_uses_top_entropy_fraction():
    cfg = LossConfig(algo="grpo-era", era_omega_low=0.45, era_top_frac=0.2)
    # 10 tokens, mean 0.28 < 0.45 but the top 2 average 1.0 > 0.45: no sharpening
    entropy = torch.tensor([[1.0, 1.0] + [0.1] * 8])
    scale, _ = era_shaping(entropy, torch.ones(1, 10), torch.ones(1, 10), cfg)
    assert torch.all(scale == 1.0)


def test_advantage_scaling_is_off_by_default():
    assert LossConfig().era_scale_advantages is False


def test_no_shaping_is_identity():
    advantages = torch.randn(2, 3)
    scale, shaped = no_shaping(torch.rand(2, 3), advantages, torch.ones(2, 3), LossConfig())
    assert scale is None and shaped is advantages
    assert LOSSES["grpo-era"].shapes and not LOSSES["grpo"].shapes


def test_cov_defaults_are_the_papers():
    cfg = LossConfig()
    # Cui et al. (2025): Clip-Cov r = 2e-4 in (1, 5); KL-Cov k = 2e-3 (7B), beta = 1.
    assert (cfg.clip_cov_frac, cfg.clip_cov_low, cfg.clip_cov_high) == (2e-4, 1.0, 5.0)
    assert (cfg.kl_cov_frac, cfg.kl_cov_coef) == (2e-3, 1.0)


def test_token_covariance_is_centred_over_valid_tokens():
    logprobs = torch.tensor([[-1.0, -3.0, -9.0]])
    advantages = torch.tensor([[1.0, -1.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # means over the two valid tokens: A 0, log-prob -2; padding gets 0
    cov = token_covariance(logprobs, advantages, mask)
    torch.testing.assert_close(cov, torch.tensor([[1.0, 1.0, 0.0]]))


def _cov_terms(old_logprobs):
    # A - mean A = A; log-prob - mean (-2) = 1.5, -1.5, -1.0, 1.0; padding last
    logprobs = torch.tensor([[-0.5, -3.5, -3.0, -1.0, -10.0]], requires_grad=True)
    return PolicyTerms(
        logprobs=logprobs,
        old_logprobs=torch.tensor([old_logprobs]),
        advantages=torch.tensor([[2.0, 2.0, -2.0, -2.0, 10.0]]),
        mask=torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]]),
        entropy=torch.zeros(1, 5),
        normaliser=4.0,
    )


def test_clip_cov_drops_the_gradient_of_an_unclipped_token_in_the_bounds():
    # covariances 3, -3, 2, -2; token 2's ratio 0.5 with A < 0 is already clipped, so of
    # the two inside (1, 5) only token 0 is eligible, and it is dropped whatever the draw.
    terms = _cov_terms([-0.5, -3.5, -3.0 + math.log(2.0), -1.0, -10.0])
    cfg = LossConfig(algo="clip-cov", clip_cov_frac=0.5)
    loss, metrics = LOSSES["clip-cov"].objective(terms, cfg)
    # token losses: 0 (dropped), -2, max(1.0, 0.8 * 2) = 1.6 (clipped), 2; over 4 tokens
    assert loss.item() == pytest.approx(1.6 / 4)
    assert metrics["clip_cov_frac"].item() == 1.0 and metrics["clip_frac"].item() == 1.0
    loss.backward()
    torch.testing.assert_close(terms.logprobs.grad, torch.tensor([[0.0, -2.0, 0.0, 2.0, 0.0]]) / 4)


def test_clip_cov_draws_the_configured_count_at_random_among_candidates():
    on_policy = [-0.5, -3.5, -3.0, -1.0, -10.0]
    cfg = LossConfig(algo="clip-cov", clip_cov_frac=0.25)  # int(0.25 * 4) = 1 token
    dropped = set()
    for seed in range(8):
        torch.manual_seed(seed)
        terms = _cov_terms(on_policy)
        LOSSES["clip-cov"].objective(terms, cfg)[0].backward()
        zero = (terms.logprobs.grad[0, :4] == 0).nonzero().flatten().tolist()
        assert len(zero) == 1
        dropped.add(zero[0])
    # tokens 0 and 2 (covariances 3 and 2) are the candidates; both get drawn
    assert dropped == {0, 2}


def test_clip_cov_outside_the_bounds_is_grpo():
    terms = _cov_terms([-0.5, -3.5, -3.0, -1.0, -10.0])
    cfg = LossConfig(algo="clip-cov", clip_cov_frac=1.0, clip_cov_low=3.5)
    loss, metrics = LOSSES["clip-cov"].objective(terms, cfg)
    grpo, _ = LOSSES["grpo"].objective(terms, LossConfig(algo="grpo"))
    assert metrics["clip_cov_frac"].item() == 0.0 and loss.item() == pytest.approx(grpo.item())


def test_kl_cov_penalises_the_top_covariance_tokens_and_never_clips():
    # ratios e^0.1, 2, 1, 1; covariances 3, -3, 2, -2: k = 2 tokens -> 0 and 2
    terms = _cov_terms([-0.6, -3.5 - math.log(2.0), -3.0, -1.0, -10.0])
    cfg = LossConfig(algo="kl-cov", kl_cov_frac=0.5, kl_cov_coef=1.0)
    loss, metrics = LOSSES["kl-cov"].objective(terms, cfg)
    assert metrics["kl_cov_frac"].item() == 2.0
    # token 0: -2 e^0.1 + |0.1|; token 1: -2 * 2 unclipped (GRPO would stop at 1.28);
    # token 2: 2 + |0| (on-policy, nothing to penalise); token 3: 2
    ratio0 = math.exp(0.1)
    assert loss.item() == pytest.approx((-2 * ratio0 + 0.1 - 4.0 + 2.0 + 2.0) / 4)
    loss.backward()
    want = torch.tensor([[-2 * ratio0 + 1.0, -4.0, 2.0, 2.0, 0.0]]) / 4
    torch.testing.assert_close(terms.logprobs.grad, want)


def test_kl_cov_on_policy_has_grpos_gradient():
    grads = []
    for algo in ("kl-cov", "grpo"):
        logprobs = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.5]])).requires_grad_()
        terms = _terms(logprobs=logprobs, old_logprobs=logprobs.detach())
        LOSSES[algo].objective(terms, LossConfig(algo=algo, kl_cov_frac=1.0))[0].backward()
        grads.append(logprobs.grad)
    torch.testing.assert_close(*grads)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("algo", "ppo", "algo must be one of"),
        ("clip_low", 1.0, "clip_low"),
        ("clip_high", 0.0, "clip_high"),
        ("kl_coef", -0.1, "kl_coef"),
        ("era_k", 1.0, "era_k"),
        ("era_omega_low", 5.0, "era_omega_low"),
        ("era_top_frac", 0.0, "era_top_frac"),
        ("clip_cov_frac", 0.0, "clip_cov_frac"),
        ("clip_cov_low", 5.0, "clip_cov_low"),
        ("kl_cov_frac", 1.5, "kl_cov_frac"),
        ("kl_cov_coef", -1.0, "kl_cov_coef"),
    ],
)
def test_loss_config_refuses_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**{field: value})
