"""Test helpers shared by the ERA packages (import only from tests; needs pytest)."""

from typing import Any

import torch

__all__ = ["cpu_and_cuda", "cuda_required"]


def cpu_and_cuda() -> tuple[Any, ...]:
    """Device parameters: ``"cpu"`` and ``"cuda"`` marked ``gpu`` (torchvision's ``cpu_and_cuda``)."""
    import pytest

    return ("cpu", pytest.param("cuda", marks=pytest.mark.gpu))


def cuda_required() -> bool:
    """Whether a missing GPU must fail the run (``ERA_REQUIRE_GPU=1``) instead of skipping it."""
    import os

    return os.environ.get("ERA_REQUIRE_GPU") == "1" and not torch.cuda.is_available()
