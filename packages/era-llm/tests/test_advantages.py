import pytest
import torch

from era_llm.advantages import group_advantages, informative_groups


def test_group_advantages_hand_computed():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    advantages = group_advantages(rewards)
    # group 0: mean 0.5, sample std sqrt(1/3)
    expected = 0.5 / (torch.tensor(1.0 / 3.0).sqrt() + 1e-6)
    torch.testing.assert_close(
        advantages[0], torch.stack([expected, -expected, -expected, expected])
    )
    assert torch.all(advantages[1] == 0.0)


def test_unscaled_advantages_keep_only_the_baseline():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(
        group_advantages(rewards, scale=False), torch.tensor([[0.75, -0.25, -0.25, -0.25]])
    )


def test_group_advantages_need_two_responses():
    with pytest.raises(ValueError, match="n >= 2"):
        group_advantages(torch.ones(3, 1))


def test_informative_groups():
    rewards = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.5, 0.5]])
    assert informative_groups(rewards).tolist() == [False, False, True, False]
