"""What ERA learns versus what its floor does: both heads, before and after temperature scaling.

An ERA-trained classifier has two readings of the same pre-activation logits ``z``:

- ``head="era"``: ``softmax(era(z))``, the floored distribution it was trained and is deployed
  with (entropy >= H0 on every input);
- ``head="plain"``: ``softmax(z)``, the same network without the floor.

A model trained without ERA has the plain head only. Each head is also reported after
temperature scaling (Guo et al., 2017): its output logits are divided by one scalar ``T``
fitted by minimising the NLL on a held-out split of the *training* data
(``data.split_holdout``), never on the test set. For the era head ``T`` divides the ERA
logits ``era(z)``; a ``T < 1`` sharpens the distribution, so the calibrated era head no longer
keeps the floor.
"""

import math
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from era_vision.distributed import Dist
from era_vision.era import ERAClassifier
from era_vision.metrics import ClassificationMetrics

__all__ = [
    "TEMPERATURE_RANGE",
    "Evaluation",
    "collect_logits",
    "evaluate_heads",
    "fit_temperature",
    "head_logits",
]


def head_logits(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    """Float32 logits of each head: ``{"era": ..., "plain": ...}``, or ``{"plain": ...}``.

    Args:
        model: A classifier; an ``ERAClassifier`` has both heads, any other model only plain.
        images: A batch of inputs.
    """
    if isinstance(model, ERAClassifier):
        plain = model.model(images).float()
        return {"era": model.era(plain), "plain": plain}
    return {"plain": model(images).float()}


TEMPERATURE_RANGE = (0.05, 20.0)


def fit_temperature(logits: Tensor, labels: Tensor, iterations: int = 60) -> float:
    """The temperature ``T`` in :data:`TEMPERATURE_RANGE` that minimises ``NLL(softmax(logits / T), labels)``.

    The NLL is convex in ``beta = 1 / T``, with derivative ``mean(E_p[z] - z_label)`` increasing
    in ``beta``, so bisection on the derivative's sign (over ``log beta``, in float64) finds the
    optimum within the range, or the end nearer to an optimum outside it (reported as a
    warning; e.g. when every held-out sample is misclassified, the NLL keeps falling as T grows).

    Calibration never reports a worse model as calibrated: when no held-out sample is
    misclassified, the optimum is ``T -> 0`` and says nothing about unseen errors, so no ``T``
    is fitted; and a fitted ``T`` whose held-out NLL is above that of ``T = 1`` is dropped.
    Both return ``T = 1`` with a one-line warning.

    Args:
        logits: ``(n, classes)`` logits of a held-out split.
        labels: ``(n,)`` class indices.
        iterations: Bisection steps (60 resolve ``log T`` to about 1e-17).

    Returns:
        ``T`` within :data:`TEMPERATURE_RANGE`, or 1.0 (no scaling).
    """
    if len(labels) == 0:
        raise ValueError("fit_temperature needs at least one held-out sample")
    logits, labels = logits.detach().double().cpu(), labels.cpu()
    errors = int((logits.argmax(-1) != labels).sum())
    if errors == 0:
        warnings.warn(
            f"temperature scaling skipped (T = 1): all {len(labels)} held-out samples are "
            "classified correctly, which leaves T undetermined; a larger "
            "--calibration-holdout gives errors to fit T on",
            stacklevel=2,
        )
        return 1.0
    # Relative to the label's logit, so that a slope of 1e-35 does not round to 0 against 1.
    margins = logits - logits.gather(1, labels[:, None])

    def slope(log_beta: float) -> float:
        probs = (logits * math.exp(log_beta)).softmax(-1)
        return (probs * margins).sum(-1).mean().item()

    low, high = TEMPERATURE_RANGE
    lo, hi = -math.log(high), -math.log(low)  # log beta
    below_range, above_range = slope(hi) < 0, slope(lo) > 0
    if below_range or above_range:
        temperature = low if below_range else high
        warnings.warn(
            f"temperature scaling: the NLL-optimal T is beyond {temperature} ({errors} of "
            f"{len(labels)} held-out samples misclassified); using T = {temperature}. "
            "A larger --calibration-holdout gives a better-determined T.",
            stacklevel=2,
        )
    else:
        for _ in range(iterations):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
        temperature = math.exp(-(lo + hi) / 2)

    def nll(t: float) -> float:
        return nn.functional.cross_entropy(logits / t, labels).item()

    if nll(temperature) > nll(1.0):
        warnings.warn(
            f"temperature scaling dropped (T = 1): the fitted T = {temperature:.4g} gives a "
            f"held-out NLL of {nll(temperature):.4f}, above {nll(1.0):.4f} at T = 1",
            stacklevel=2,
        )
        return 1.0
    return temperature


@torch.no_grad()
def collect_logits(
    model: nn.Module,
    dataset: Dataset,
    ctx: Dist,
    batch_size: int = 256,
    workers: int = 0,
    memory_format: torch.memory_format = torch.contiguous_format,
    amp: bool = True,
) -> tuple[dict[str, Tensor], Tensor]:
    """Every head's logits on this rank's shard (every world-size-th sample) of ``dataset``.

    Args:
        model: The classifier (not DDP-wrapped); put in eval mode.
        dataset: Yields ``(image, label)``.
        ctx: Rank, world size and device.
        batch_size: Images per forward pass.
        workers: DataLoader workers.
        memory_format: Input memory format (``torch.channels_last`` to match such a model).
        amp: bf16 autocast on CUDA (the heads run in float32).

    Returns:
        ``(logits per head, labels)``, on ``ctx.device``.
    """
    model.eval()
    shard = range(ctx.rank, len(dataset), ctx.world_size)  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size, sampler=shard, num_workers=workers)
    autocast = torch.autocast(
        ctx.device.type, torch.bfloat16, enabled=amp and ctx.device.type == "cuda"
    )
    batches: dict[str, list[Tensor]] = {}
    labels = []
    for images, targets in loader:
        with autocast:
            heads = head_logits(model, images.to(ctx.device, memory_format=memory_format))
        for head, logits in heads.items():
            batches.setdefault(head, []).append(logits.float())
        labels.append(targets.to(ctx.device))
    return {head: torch.cat(chunks) for head, chunks in batches.items()}, torch.cat(labels)


def _gather(logits: dict[str, Tensor], labels: Tensor, ctx: Dist) -> tuple[dict, Tensor]:
    """All ranks' shards on every rank (on the CPU), so each fits the same temperature."""
    if ctx.world_size == 1:
        return logits, labels
    shards: list = [None] * ctx.world_size
    dist.all_gather_object(shards, ({k: v.cpu() for k, v in logits.items()}, labels.cpu()))
    merged = {head: torch.cat([s[0][head] for s in shards]) for head in logits}
    return merged, torch.cat([s[1] for s in shards])


@dataclass
class Evaluation:
    """The metrics of every head, uncalibrated and temperature-scaled, on a test split.

    Attributes:
        rows: One dict per (head, calibrated): ``head``, ``calibrated``, ``temperature`` and
            top1, top5, nll, ece, entropy_mean, entropy_min.
        reliability: ``"<head>"`` / ``"<head>_calibrated"`` -> reliability bins.
        temperatures: The fitted ``T`` per head (empty without a held-out split).
        holdout_size: Images the temperatures were fitted on (0: none).
        logits: This rank's test logits per head (before scaling), for saving.
        labels: This rank's test labels.
    """

    rows: list[dict]
    reliability: dict[str, dict[str, list[float]]]
    temperatures: dict[str, float]
    holdout_size: int
    logits: dict[str, Tensor]
    labels: Tensor

    def row(self, head: str, calibrated: bool = False) -> dict:
        """The row of one head (KeyError if this model has no such head or calibration)."""
        for row in self.rows:
            if row["head"] == head and row["calibrated"] == calibrated:
                return row
        raise KeyError(f"no row for head={head!r}, calibrated={calibrated}")


def tag(row: dict) -> str:
    """A row's name in logs and plots: ``era``, ``era_calibrated``, ``plain``, ..."""
    return row["head"] + ("_calibrated" if row["calibrated"] else "")


def evaluate_heads(
    model: nn.Module,
    test_set: Dataset,
    holdout_set: Dataset | None,
    ctx: Dist,
    batch_size: int = 256,
    workers: int = 0,
    memory_format: torch.memory_format = torch.contiguous_format,
    amp: bool = True,
) -> Evaluation:
    """Both heads' metrics on ``test_set``, before and after temperature scaling.

    Args:
        model: The classifier (not DDP-wrapped).
        test_set: Yields ``(image, label)``; sharded over ranks.
        holdout_set: The held-out training images to fit the temperatures on; None reports
            uncalibrated rows only.
        ctx: Rank, world size and device.
        batch_size: Images per forward pass.
        workers: DataLoader workers.
        memory_format: Input memory format.
        amp: bf16 autocast on CUDA.

    Returns:
        The evaluation, with metrics merged over ranks.
    """
    args = (ctx, batch_size, workers, memory_format, amp)
    temperatures = {}
    holdout_size = 0
    if holdout_set is not None:
        held, held_labels = _gather(*collect_logits(model, holdout_set, *args), ctx)
        temperatures = {head: fit_temperature(held[head], held_labels) for head in held}
        holdout_size = len(held_labels)
    logits, labels = collect_logits(model, test_set, *args)
    rows, reliability = [], {}
    for head in logits:
        for calibrated in (False, True) if temperatures else (False,):
            temperature = temperatures[head] if calibrated else 1.0
            metrics = ClassificationMetrics(device=ctx.device)
            metrics.update(logits[head] / temperature, labels)
            metrics.all_reduce()
            row = {"head": head, "calibrated": calibrated, "temperature": temperature}
            rows.append(row | metrics.compute())
            reliability[tag(row)] = metrics.reliability()
    return Evaluation(rows, reliability, temperatures, holdout_size, logits, labels)
