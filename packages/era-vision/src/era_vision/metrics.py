"""Accuracy and calibration metrics, accumulated as sums so that ranks can be merged."""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from era_core.entropy import categorical_entropy

__all__ = ["ClassificationMetrics", "calibration_bins", "expected_calibration_error"]


def calibration_bins(confidence: Tensor, correct: Tensor, num_bins: int = 15) -> Tensor:
    """Per-bin count, confidence sum and accuracy sum for a reliability diagram.

    Bins split (0, 1] into ``num_bins`` equal intervals ``(lo, hi]`` (Guo et al., 2017).

    Args:
        confidence: ``(n,)`` top-1 probabilities.
        correct: ``(n,)`` whether the top-1 prediction is right (bool or 0/1).
        num_bins: Number of bins.

    Returns:
        ``(3, num_bins)`` float64 tensor: counts, summed confidence, summed correctness.
    """
    edges = torch.linspace(0, 1, num_bins + 1, dtype=torch.float64, device=confidence.device)
    index = torch.bucketize(confidence.double(), edges[1:-1])
    bins = torch.zeros(3, num_bins, dtype=torch.float64, device=confidence.device)
    for row, values in enumerate((torch.ones_like(index), confidence, correct)):
        bins[row].index_add_(0, index, values.double())
    return bins


def expected_calibration_error(bins: Tensor) -> float:
    """ECE from ``calibration_bins``: sum over bins of ``n_b / n * |accuracy_b - confidence_b|``."""
    count, confidence, correct = bins
    return ((correct - confidence).abs().sum() / count.sum()).item()


class ClassificationMetrics:
    """Top-1, top-5, NLL, ECE and predictive entropy (mean and minimum) over an eval set.

    Args:
        num_bins: ECE / reliability bins.
        device: Where the running sums live (the logits' device).
    """

    def __init__(self, num_bins: int = 15, device: torch.device | str = "cpu"):
        # count, top-1 hits, top-5 hits, summed NLL, summed entropy
        self.sums = torch.zeros(5, dtype=torch.float64, device=device)
        self.entropy_min = torch.tensor(float("inf"), dtype=torch.float64, device=device)
        self.bins = torch.zeros(3, num_bins, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, logits: Tensor, targets: Tensor) -> None:
        """Add a batch of logits ``(batch, classes)`` and labels ``(batch,)``."""
        logits = logits.float()
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hits = top == targets[:, None]
        entropy = categorical_entropy(logits)
        nll = F.cross_entropy(logits, targets, reduction="sum")
        batch = torch.stack(
            [
                torch.tensor(float(len(targets)), device=logits.device),
                hits[:, 0].sum(),
                hits.any(-1).sum(),
                nll,
                entropy.sum(),
            ]
        )
        self.sums += batch.double()
        self.entropy_min = torch.minimum(self.entropy_min, entropy.min().double())
        confidence = logits.softmax(-1).max(-1).values
        self.bins += calibration_bins(confidence, hits[:, 0], self.bins.shape[1])

    def all_reduce(self) -> None:
        """Merge the sums of all ranks (no-op without an initialised process group)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.sums)
            dist.all_reduce(self.bins)
            dist.all_reduce(self.entropy_min, op=dist.ReduceOp.MIN)

    def compute(self) -> dict[str, float]:
        """Metrics with stable keys: top1, top5, nll, ece, entropy_mean, entropy_min."""
        n, top1, top5, nll, entropy = self.sums.tolist()
        if n == 0:
            raise ValueError("no samples were evaluated")
        return {
            "top1": top1 / n,
            "top5": top5 / n,
            "nll": nll / n,
            "ece": expected_calibration_error(self.bins),
            "entropy_mean": entropy / n,
            "entropy_min": self.entropy_min.item(),
        }

    def reliability(self) -> dict[str, list[float]]:
        """Per-bin count, mean confidence and accuracy (NaN for empty bins), for plotting."""
        count, confidence, correct = self.bins
        return {
            "count": count.tolist(),
            "confidence": (confidence / count).tolist(),
            "accuracy": (correct / count).tolist(),
        }
