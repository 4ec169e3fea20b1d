import math
import typing

import pytest
import torch

from era_vision.losses import LOSSES, Regularizer, confidence_penalty, cross_entropy
from era_vision.metrics import ClassificationMetrics, calibration_bins, expected_calibration_error

LOGITS = torch.tensor([[math.log(3.0), 0.0]])  # p = (0.75, 0.25)
TARGET = torch.tensor([0])


def test_cross_entropy_by_hand():
    assert cross_entropy(torch.zeros(1, 2), TARGET).item() == pytest.approx(math.log(2))
    # epsilon = 0.2 over 2 classes: target (0.9, 0.1)
    expected = -(0.9 * math.log(0.75) + 0.1 * math.log(0.25))
    assert cross_entropy(LOGITS, TARGET, 0.2).item() == pytest.approx(expected)


def test_confidence_penalty_by_hand():
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    loss = confidence_penalty(LOGITS, TARGET, beta=0.5)
    assert loss.item() == pytest.approx(-math.log(0.75) - 0.5 * entropy, abs=1e-6)
    # The penalty pushes toward higher entropy: its gradient lowers the top logit less than CE.
    logits = LOGITS.clone().requires_grad_()
    confidence_penalty(logits, TARGET, beta=0.0).backward()
    plain = logits.grad.clone()
    logits.grad = None
    confidence_penalty(logits, TARGET, beta=0.5).backward()
    assert logits.grad[0, 0] > plain[0, 0]


def test_every_regularizer_has_a_loss():
    assert set(LOSSES) == set(typing.get_args(Regularizer))


def test_calibration_bins_and_ece_by_hand():
    # 0.9 (right) lands in (0.867, 0.933]; 0.6 = 9/15 (wrong) in (0.533, 0.6], upper edge included.
    bins = calibration_bins(
        torch.tensor([0.9, 0.6], dtype=torch.float64), torch.tensor([True, False])
    )
    assert bins[0].nonzero().flatten().tolist() == [8, 13]
    assert expected_calibration_error(bins) == pytest.approx((0.1 + 0.6) / 2)
    edge = calibration_bins(torch.tensor([1.0, 1 / 15], dtype=torch.float64), torch.tensor([1, 1]))
    assert edge[0, 14] == 1 and edge[0, 0] == 1


def test_classification_metrics_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    targets = torch.tensor([0, 2, 0])
    metrics = ClassificationMetrics()
    metrics.update(logits[:2], targets[:2])
    metrics.update(logits[2:], targets[2:])
    out = metrics.compute()
    logp = logits.log_softmax(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    # row 1 ties: topk picks index 0, which is wrong
    assert out["top1"] == pytest.approx(1 / 3)
    assert out["top5"] == 1.0  # 3 classes: every label is in the top 5
    assert out["nll"] == pytest.approx(-logp[[0, 1, 2], targets].mean().item())
    assert out["entropy_mean"] == pytest.approx(entropy.mean().item(), rel=1e-5)
    assert out["entropy_min"] == pytest.approx(entropy.min().item(), rel=1e-5)
    confidence = logp.exp().max(-1).values
    correct = torch.tensor([1.0, 0.0, 0.0])
    assert out["ece"] == pytest.approx(
        expected_calibration_error(calibration_bins(confidence, correct))
    )
    reliability = metrics.reliability()
    assert sum(reliability["count"]) == 3
    assert sum(math.isnan(a) for a in reliability["accuracy"]) == 15 - 3


def test_metrics_refuse_empty():
    with pytest.raises(ValueError, match="no samples"):
        ClassificationMetrics().compute()
