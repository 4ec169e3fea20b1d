import gymnasium as gym
import numpy as np
import pytest

from era_control import envs


def test_actions_rescaled_and_observations_float32():
    env = envs.make_env("Pendulum-v1")  # native actions in [-2, 2]
    assert env.action_space.low.tolist() == [-1.0] and env.action_space.high.tolist() == [1.0]
    assert env.action(np.array([1.0]))[0] == pytest.approx(2.0)
    assert env.action(np.array([-0.5]))[0] == pytest.approx(-1.0)
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and env.observation_space.dtype == np.float32


def test_unknown_env_names_close_matches():
    with pytest.raises(ValueError, match=r"did you mean \['Hopper-v5'"):
        envs.resolve_env_id("Hoppper-v5")


def test_humanoidbench_missing_explains_install():
    try:
        import humanoid_bench  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="HumanoidBench is not on PyPI"):
            envs.resolve_env_id("h1hand-walk-v0")
    else:
        assert envs.resolve_env_id("h1hand-walk-v0").id == "h1hand-walk-v0"


def test_dm_control_dict_observations_are_flattened():
    pytest.importorskip("shimmy")
    pytest.importorskip("dm_control")
    env = envs.make_env("dm_control/cartpole-swingup-v0")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (5,) and obs.dtype == np.float32


@pytest.mark.parametrize("env_id", ["Hopper-v5", "Pendulum-v1", "dm_control/cartpole-swingup-v0"])
def test_snapshot_continues_exactly(env_id):
    if env_id.startswith("dm_control/"):
        pytest.importorskip("shimmy")
    vec = envs.make_vector_env(env_id, 2)
    vec.reset(seed=[0, 1])
    actions = np.random.default_rng(0).uniform(-1, 1, (400, 2, *vec.single_action_space.shape))
    for a in actions[:150]:
        vec.step(a)
    copy = envs.restore_envs(envs.snapshot_envs(vec), env_id)
    for a in actions[150:]:  # crosses episode ends and autoresets
        first, second = vec.step(a), copy.step(a)
        for x, y in zip(first[:4], second[:4], strict=True):
            np.testing.assert_array_equal(x, y)


def test_truncation_keeps_the_final_observation():
    vec = envs.make_vector_env("Pendulum-v1", 1)  # time limit 200, never terminates
    vec.reset(seed=0)
    for t in range(200):
        next_obs, _, terminated, truncated, info = vec.step(np.zeros((1, 1), np.float32))
        real = envs.final_observations(next_obs, terminated | truncated, info)
        if t < 199:
            np.testing.assert_array_equal(real, next_obs)
    assert truncated[0] and not terminated[0]
    assert not np.array_equal(real, next_obs)  # next_obs already starts the next episode
    np.testing.assert_allclose(
        np.linalg.norm(real[0, :2]), 1.0, rtol=1e-5
    )  # (cos, sin) of the angle


def test_evaluate_is_reproducible_and_isolated():
    vec = envs.make_vector_env("Pendulum-v1", 2)
    policy = lambda obs: -np.clip(obs[:, 2:3], -1, 1)  # noqa: E731 - damping controller
    first = envs.evaluate(policy, vec, [10, 20], episodes=2)
    second = envs.evaluate(policy, vec, [10, 20], episodes=2)
    np.testing.assert_array_equal(first, second)
    assert first.shape == (2,) and first[0] != first[1]
    assert gym.spec("Pendulum-v1").max_episode_steps == 200
