"""Training losses of the regularisers compared with ERA, as small pure functions.

``dropout`` and ``era`` act inside the model (a dropout layer, the ERA head), so their loss is
plain cross-entropy; label smoothing can be added to any of them explicitly.
"""

from collections.abc import Callable
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from era_core.entropy import categorical_entropy

__all__ = ["LOSSES", "Regularizer", "confidence_penalty", "cross_entropy"]

Regularizer = Literal["ce", "label-smoothing", "dropout", "confidence-penalty", "era"]


def cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy, optionally with label smoothing (Szegedy et al., 2016).

    Args:
        logits: ``(batch, classes)``.
        targets: ``(batch,)`` class indices.
        label_smoothing: ε in [0, 1): the target puts 1 - ε + ε/D on the label, ε/D elsewhere.

    Returns:
        Scalar loss, computed in float32.
    """
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def confidence_penalty(
    logits: Tensor, targets: Tensor, beta: float, label_smoothing: float = 0.0
) -> Tensor:
    """Cross-entropy minus ``beta`` times the mean predictive entropy (Pereyra et al., 2017).

    Args:
        logits: ``(batch, classes)``.
        targets: ``(batch,)`` class indices.
        beta: Weight of the entropy bonus, >= 0.
        label_smoothing: ε added to the cross-entropy term.

    Returns:
        Scalar loss, computed in float32.
    """
    entropy = categorical_entropy(logits.float())
    return cross_entropy(logits, targets, label_smoothing) - beta * entropy.mean()


# The loss each regulariser trains with; selected by `TrainConfig.regularizer`.
LOSSES: dict[Regularizer, Callable[..., Tensor]] = {
    "ce": cross_entropy,
    "label-smoothing": cross_entropy,
    "dropout": cross_entropy,
    "confidence-penalty": confidence_penalty,
    "era": cross_entropy,
}
