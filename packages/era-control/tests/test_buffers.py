import numpy as np
import pytest
import torch

from era_control import rng
from era_control.buffers import ReplayBuffer


def fill(buffer, n, seeds=2):
    for t in range(n):
        value = np.full(seeds, float(t)) + np.arange(seeds) * 1000
        buffer.add(
            value[:, None].repeat(3, 1),
            value[:, None],
            value,
            value[:, None].repeat(3, 1) + 0.5,
            value * 0,
        )


def test_sample_keeps_transitions_and_seeds_together():
    buffer = ReplayBuffer(50, 2, 3, 1)
    fill(buffer, 20)
    batch = buffer.sample(64, rng.generators([0, 1]))
    assert batch.obs.shape == (2, 64, 3) and batch.reward.shape == (2, 64)
    torch.testing.assert_close(batch.obs[..., 0], batch.reward)
    torch.testing.assert_close(batch.next_obs[..., 0], batch.reward + 0.5)
    assert (batch.reward[0] < 1000).all() and (batch.reward[1] >= 1000).all()


def test_ring_overwrites_oldest():
    buffer = ReplayBuffer(10, 1, 3, 1)
    fill(buffer, 25, seeds=1)
    assert len(buffer) == 10
    assert set(buffer.state_dict()["reward"][:, 0].tolist()) == set(map(float, range(15, 25)))


def test_state_dict_round_trip_continues_identically():
    buffer = ReplayBuffer(30, 2, 3, 1)
    fill(buffer, 12)
    restored = ReplayBuffer(30, 2, 3, 1)
    restored.load_state_dict(buffer.state_dict())
    gens_a, gens_b = rng.generators([0, 1]), rng.generators([0, 1])
    torch.testing.assert_close(buffer.sample(8, gens_a).obs, restored.sample(8, gens_b).obs)
    fill(buffer, 3)
    fill(restored, 3)
    torch.testing.assert_close(buffer.sample(8, gens_a).obs, restored.sample(8, gens_b).obs)


def test_full_buffer_restored_into_a_larger_one_appends_after_its_last_transition():
    small, large, fresh = (
        ReplayBuffer(10, 1, 3, 1),
        ReplayBuffer(20, 1, 3, 1),
        ReplayBuffer(20, 1, 3, 1),
    )
    fill(small, 10, seeds=1)  # exactly full: its write position wrapped to 0
    large.load_state_dict(small.state_dict())
    fill(fresh, 10, seeds=1)
    for buffer in (large, fresh):
        buffer.add(*(np.full((1, n), 99.0) for n in (3, 1)), np.full(1, 99.0),
                   np.full((1, 3), 99.0), np.zeros(1))  # fmt: skip
    torch.testing.assert_close(large.state_dict()["reward"], fresh.state_dict()["reward"])
    assert len(large) == 11


def test_empty_and_bad_capacity():
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0, 1, 3, 1)
    with pytest.raises(RuntimeError, match="empty"):
        ReplayBuffer(5, 1, 3, 1).sample(4, rng.generators([0]))


def test_stored_bytes_is_what_a_full_buffer_saves():
    buffer = ReplayBuffer(7, 2, 3, 1)
    fill(buffer, 10)
    saved = buffer.state_dict()
    nbytes = sum(v.nbytes for v in saved.values() if isinstance(v, torch.Tensor))
    assert nbytes == ReplayBuffer.stored_bytes(7, 2, 3, 1) == 7 * 2 * (3 + 1 + 1 + 3 + 1) * 4
