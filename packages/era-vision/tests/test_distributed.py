"""Collectives under DDP: each gets a tensor on the device its process group serves.

NCCL serves CUDA tensors only, and a CPU tensor handed to it fails at run time. A recording
stand-in for ``torch.distributed`` checks this on a CPU-only machine: the job's device is
``meta`` (not the CPU that every stray ``torch.tensor(...)`` lands on), and each collective
records the device of what it receives.
"""

import pytest
import torch
import torch.distributed as dist
from torch import nn

import era_vision.distributed
import era_vision.metrics
import era_vision.train
from era_vision.distributed import Dist, average_bn_stats
from era_vision.metrics import ClassificationMetrics
from era_vision.train import SIGNAL_CHECK_EVERY, Position, _Interrupt, _log_train

META = Dist(rank=0, world_size=2, device=torch.device("meta"))


class Recorded(Exception):
    """Raised by the stand-in after recording, where the caller would go on to read values."""


class RecordingDist:
    """Stands in for ``torch.distributed`` in a world of two: records (collective, device)."""

    ReduceOp = dist.ReduceOp

    def __init__(self, stop_after: bool = False):
        self.calls: list[tuple[str, torch.device]] = []
        self.stop_after = stop_after

    def all_reduce(self, tensor: torch.Tensor, op: object = None) -> None:
        self.calls.append(("all_reduce", tensor.device))
        if self.stop_after:
            raise Recorded

    def get_world_size(self) -> int:
        return 2

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True


@pytest.fixture
def recording(monkeypatch):
    def install(stop_after: bool = False) -> RecordingDist:
        fake = RecordingDist(stop_after)
        for module in (era_vision.train, era_vision.distributed, era_vision.metrics):
            monkeypatch.setattr(module, "dist", fake)
        return fake

    return install


def test_signal_check_is_a_collective_every_n_steps_on_the_job_device(recording):
    fake = recording(stop_after=True)
    interrupt = _Interrupt(META)
    for step in range(1, SIGNAL_CHECK_EVERY):
        assert not interrupt.check(step)
    assert fake.calls == []  # no collective on ordinary steps
    with pytest.raises(Recorded):
        interrupt.check(SIGNAL_CHECK_EVERY)
    assert fake.calls == [("all_reduce", torch.device("meta"))]


def test_single_process_signal_check_needs_no_collective(recording):
    fake = recording()
    interrupt = _Interrupt(Dist(0, 1, torch.device("cpu")))
    interrupt.signum = 15
    assert interrupt.check(3) and fake.calls == []


def test_train_log_window_is_reduced_on_the_job_device(recording):
    fake = recording(stop_after=True)
    with pytest.raises(Recorded):
        _log_train(None, Position(4, torch.zeros(3, device="meta")), 0.1, 8, 1.0, META, None, None)  # type: ignore[arg-type]
    assert fake.calls == [("all_reduce", torch.device("meta"))]


def test_checkpoint_log_window_is_reduced_on_the_job_device(recording):
    fake = recording(stop_after=True)
    pos = Position(4, torch.zeros(3, device="meta"))
    with pytest.raises(Recorded):
        era_vision.train.save_checkpoint(None, None, None, pos, META)  # type: ignore[arg-type]
    assert fake.calls == [("all_reduce", torch.device("meta"))]


def test_batch_norm_stats_and_metrics_are_reduced_on_the_job_device(recording):
    fake = recording()
    average_bn_stats(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).to("meta"))
    ClassificationMetrics(device="meta").all_reduce()
    assert len(fake.calls) == 5
    assert {device for _, device in fake.calls} == {torch.device("meta")}
