import os

import pytest
import torch
from hypothesis import settings

from era_core.testing import apply_gpu_policy

# The same examples on every run, so a pass cannot turn into a failure on the next run;
# HYPOTHESIS_PROFILE=explore draws fresh examples (run it when changing the maths).
settings.register_profile("deterministic", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    apply_gpu_policy(items)


@pytest.fixture(autouse=True)
def _restore_rng_state():
    """Each test starts from the same seed and leaves the global RNG as it found it."""
    state = torch.get_rng_state()
    torch.manual_seed(0)
    yield
    torch.set_rng_state(state)
