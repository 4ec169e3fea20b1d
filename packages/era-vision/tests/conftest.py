import pytest
import torch

from era_core.testing import apply_gpu_policy


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    apply_gpu_policy(items)


@pytest.fixture(autouse=True)
def _restore_rng_state():
    """Each test starts from the same seed and leaves the global RNG as it found it."""
    state = torch.get_rng_state()
    threads = torch.get_num_threads()
    # The test models are tiny: one thread is faster than two fighting over a shared CPU.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_rng_state(state)
    torch.set_num_threads(threads)
