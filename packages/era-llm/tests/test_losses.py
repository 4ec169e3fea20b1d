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


def test_era_shaping_branches():
    cfg = LossConfig(
        algo="grpo-era", era_omega_low=0.5, era_omega_high=2.0, era_k=2.0, era_top_frac=1.0
    )
    # response entropies (top_frac=1: plain mean): 0.1 (low), 3.0 (high), 1.0 (band), 0.1 (low, A < 0)
    entropy = torch.tensor([[0.1, 0.1], [3.0, 3.0], [1.0, 1.0], [0.1, 0.1]])
    mask = torch.ones(4, 2)
    advantages = torch.tensor([[2.0, 2.0], [2.0, 2.0], [2.0, 2.0], [-2.0, -2.0]])
    scale, shaped = era_shaping(entropy, advantages, mask, cfg)
    torch.testing.assert_close(
        scale, torch.tensor([[2.0, 2.0], [0.5, 0.5], [1.0, 1.0], [1.0, 1.0]])
    )
    torch.testing.assert_close(
        shaped, torch.tensor([[1.0, 1.0], [4.0, 4.0], [2.0, 2.0], [-2.0, -2.0]])
    )


def test_era_shaping_uses_top_entropy_fraction():
    cfg = LossConfig(algo="grpo-era", era_omega_low=0.45, era_top_frac=0.2)
    # 10 tokens, mean 0.28 < 0.45 but the top 2 average 1.0 > 0.45: no sharpening
    entropy = torch.tensor([[1.0, 1.0] + [0.1] * 8])
    scale, _ = era_shaping(entropy, torch.ones(1, 10), torch.ones(1, 10), cfg)
    assert torch.all(scale == 1.0)


def test_no_shaping_is_identity():
    advantages = torch.randn(2, 3)
    scale, shaped = no_shaping(torch.rand(2, 3), advantages, torch.ones(2, 3), LossConfig())
    assert scale is None and shaped is advantages
    assert LOSSES["grpo-era"].shapes and not LOSSES["grpo"].shapes


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
    ],
)
def test_loss_config_refuses_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**{field: value})
