import math

import pytest
import torch

from era_core.entropy import categorical_entropy
from era_core.functional import response_entropy, token_era, token_era_scale


def reference_response_entropy(token_entropy, mask, top_frac):
    out = []
    for row, valid in zip(token_entropy, mask.bool()):
        values = row[valid].sort(descending=True).values
        count = max(1, math.floor(top_frac * len(values)))
        out.append(values[:count].mean() if len(values) else torch.tensor(0.0))
    return torch.stack(out)


@pytest.mark.parametrize("top_frac", [0.2, 0.5, 1.0, 0.01])
def test_response_entropy_matches_the_reference_rule(top_frac):
    token_entropy = torch.rand(16, 23)
    mask = torch.rand(16, 23) < 0.7
    mask[0] = False  # an empty response gets 0
    mask[1, :] = False
    mask[1, 4] = True  # a single token is its own top 20 %
    expected = reference_response_entropy(token_entropy, mask, top_frac)
    torch.testing.assert_close(response_entropy(token_entropy, mask, top_frac), expected)


def test_response_entropy_refuses_bad_fraction():
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="top_frac"):
            response_entropy(torch.rand(2, 3), torch.ones(2, 3), bad)


def test_token_era_branches_by_hand():
    logits = torch.tensor(
        [[[1.0, -1.0]], [[1.0, -1.0]], [[1.0, -1.0]], [[1.0, -1.0]], [[2.0, 0.0]]]
    )
    entropy = torch.tensor([0.1, 5.0, 1.0, 0.1, 5.0])
    advantages = torch.tensor([[1.0], [1.0], [1.0], [-1.0], [0.0]])
    logits_before, advantages_before = logits.clone(), advantages.clone()
    new_logits, new_advantages = token_era(
        logits, entropy, advantages, omega_low=0.45, omega_high=3.0, k=2.0
    )
    # low entropy, A > 0: sharpen (k z, A / k); high entropy, A > 0: flatten (z / k, k A);
    # in between, or A <= 0: unchanged.
    torch.testing.assert_close(new_logits[0], 2.0 * logits[0])
    torch.testing.assert_close(new_logits[1], 0.5 * logits[1])
    torch.testing.assert_close(new_logits[2:], logits[2:])
    torch.testing.assert_close(new_advantages.squeeze(-1), torch.tensor([0.5, 2.0, 1.0, -1.0, 0.0]))
    # no in-place surprises
    assert torch.equal(logits, logits_before) and torch.equal(advantages, advantages_before)
    _, unscaled = token_era(logits, entropy, advantages, scale_advantages=False)
    torch.testing.assert_close(unscaled, advantages)
    assert unscaled.data_ptr() != advantages.data_ptr()


def test_token_era_gradcheck():
    logits = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    entropy = torch.tensor([0.1, 1.0, 5.0], dtype=torch.float64)
    advantages = torch.randn(3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: token_era(z, entropy, advantages)[0], (logits,))


def test_token_era_scale_broadcasts_per_sequence_and_per_token():
    entropy = torch.tensor([0.1, 5.0])
    scale, _ = token_era_scale(entropy, torch.tensor([[1.0, -1.0, 2.0], [1.0, 1.0, -3.0]]))
    torch.testing.assert_close(scale, torch.tensor([[2.0, 1.0, 2.0], [0.5, 0.5, 1.0]]))
    scale, advantages = token_era_scale(entropy, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(scale, torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(advantages, torch.tensor([0.5, 2.0]))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"k": 1.0}, "k"), ({"k": 0.5}, "k"), ({"omega_low": 3.5, "omega_high": 3.0}, "omega_low")],
)
def test_token_era_refuses_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        token_era_scale(torch.rand(2), torch.rand(2, 3), **kwargs)


def train_bandit(use_era: bool, steps: int = 600) -> list[float]:
    """GRPO on a bandit: responses of i.i.d. tokens, reward = share of tokens from a good set.

    Four of sixteen tokens are equally good, so plain policy-gradient collapses onto one of
    them (rich-get-richer); ERA's sharpened positive updates push the leader down instead.
    """
    vocab, length, group, good = 16, 16, 32, 4
    gen = torch.Generator().manual_seed(0)
    logits_param = torch.zeros(vocab, requires_grad=True)
    optimiser = torch.optim.SGD([logits_param], lr=0.7)
    trace = []
    for _ in range(steps):
        with torch.no_grad():
            probs = logits_param.softmax(-1).expand(group, vocab)
            tokens = torch.multinomial(probs, length, replacement=True, generator=gen)
            reward = (tokens < good).float().mean(-1)
            advantage = (reward - reward.mean()) / (reward.std() + 1e-6)
        logits = logits_param.expand(group, length, vocab)
        entropy = response_entropy(categorical_entropy(logits.detach()), torch.ones(group, length))
        trace.append(entropy.mean().item())
        advantages = advantage[:, None].expand(group, length)
        if use_era:
            logits, advantages = token_era(
                logits, entropy, advantages, omega_low=0.45, omega_high=3.0, k=2.0
            )
        logprobs = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        loss = -(logprobs * advantages).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return trace


@pytest.mark.slow
def test_token_era_keeps_a_bandit_policy_from_collapsing():
    plain, era = train_bandit(use_era=False), train_bandit(use_era=True)
    assert min(plain) < 0.45
    assert min(era) > 0.45 * 0.9
