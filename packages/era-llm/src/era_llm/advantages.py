"""Group-relative advantages and the dynamic-sampling filter (GRPO, DAPO)."""

from torch import Tensor

__all__ = ["group_advantages", "informative_groups"]


def group_advantages(rewards: Tensor, scale: bool = True, eps: float = 1e-6) -> Tensor:
    """GRPO advantages: each reward minus its group's mean, optionally over the group's std.

    Args:
        rewards: Shape ``(groups, n)``: ``n`` responses to each prompt.
        scale: Divide by the group's standard deviation (GRPO); ``False`` keeps only the
            mean baseline (Dr. GRPO), which does not up-weight nearly-solved prompts.
        eps: Added to the std so uniform groups get advantage 0, not NaN.

    Returns:
        Shape ``(groups, n)``.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(
            f"rewards must have shape (groups, n) with n >= 2, got {tuple(rewards.shape)}"
        )
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def informative_groups(rewards: Tensor) -> Tensor:
    """Groups whose rewards are not all equal: the only ones with a non-zero GRPO gradient.

    DAPO's dynamic sampling keeps these and refills the batch with new prompts.

    Shape: ``(groups, n) -> (groups,)`` bool.
    """
    return (rewards != rewards[:, :1]).any(dim=1)
