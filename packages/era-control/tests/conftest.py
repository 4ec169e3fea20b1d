import pytest
import torch

from era_core.testing import apply_gpu_policy


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    apply_gpu_policy(items)


@pytest.fixture(autouse=True)
def _restore_rng_state():
    """Each test starts from a fixed seed and leaves torch's RNG (and threads) as it found them."""
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    torch.manual_seed(0)
    yield
    torch.set_rng_state(state)
    torch.set_num_threads(threads)
