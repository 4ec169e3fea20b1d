import ctypes
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import yaml
from gymnasium.envs.classic_control.pendulum import PendulumEnv
from gymnasium.envs.mujoco.inverted_pendulum_v5 import InvertedPendulumEnv

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


@pytest.mark.parametrize("env_id", ["h1hand-walk-v0", "h1simplehand-pole-v0", "g1-walk-v0"])
def test_humanoidbench_missing_explains_install(env_id):
    try:
        import humanoid_bench  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="HumanoidBench is not on PyPI"):
            envs.resolve_env_id(env_id)
    else:
        assert envs.resolve_env_id(env_id).id == env_id


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
    copy = envs.restore_envs(envs.snapshot_envs(vec), env_id, 2, [0, 1]).envs
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


class _HandleMixin:
    """Holds a ctypes pointer, as HumanoidBench's envs do: pickling raises ValueError."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.handle = ctypes.pointer(ctypes.c_int(7))


class UnpicklableInvertedPendulum(_HandleMixin, InvertedPendulumEnv):
    pass


class UnpicklablePendulum(_HandleMixin, PendulumEnv):
    pass


gym.register("EraTest/UnpicklableMujoco-v0", UnpicklableInvertedPendulum, max_episode_steps=100)
gym.register("EraTest/UnpicklablePendulum-v0", UnpicklablePendulum, max_episode_steps=200)


def test_unpicklable_mujoco_env_restores_its_simulator_state():
    env_id = "EraTest/UnpicklableMujoco-v0"
    vec = envs.make_vector_env(env_id, 2)
    vec.reset(seed=[0, 1])
    actions = np.random.default_rng(0).uniform(-0.3, 0.3, (60, 2, 1))
    for a in actions[:20]:
        vec.step(a)
    snapshot = envs.snapshot_envs(vec)
    assert snapshot["kind"] == "mujoco" and "pickle" in snapshot["reason"]
    restored = envs.restore_envs(snapshot, env_id, 2, [5, 6])
    assert restored.obs is None and "qpos/qvel/act/time" in restored.note
    for a in actions[20:]:  # the same trajectory, up to the time limit's truncation
        first, second = vec.step(a), restored.envs.step(a)
        for x, y in zip(first[:4], second[:4], strict=True):
            np.testing.assert_array_equal(x, y)


def test_unpicklable_non_mujoco_env_starts_fresh_episodes():
    vec = envs.make_vector_env("EraTest/UnpicklablePendulum-v0", 2)
    vec.reset(seed=[0, 1])
    snapshot = envs.snapshot_envs(vec)
    assert snapshot["kind"] == "none"
    restored = envs.restore_envs(snapshot, "EraTest/UnpicklablePendulum-v0", 2, [3, 4])
    expected, _ = envs.make_vector_env("EraTest/UnpicklablePendulum-v0", 2).reset(seed=[3, 4])
    np.testing.assert_array_equal(restored.obs, expected)
    assert "fresh episodes" in restored.note


@pytest.mark.parametrize(
    "env_id", ["EraTest/UnpicklableMujoco-v0", "EraTest/UnpicklablePendulum-v0"]
)
def test_sac_checkpoints_and_resumes_an_unpicklable_env(tmp_path, monkeypatch, env_id):
    from era_control import checkpoint, sac

    cfg = sac.SACConfig(env=env_id, steps=120, learning_starts=50, hidden=(8, 8), batch_size=16,
                        eval_every=10**6, eval_episodes=1, out=str(tmp_path), tensorboard=False)  # fmt: skip
    (tmp_path / "run.yaml").write_text("algo: sac\n")
    stop = checkpoint.StopSignal()
    stop.signum = 2  # as if SIGINT arrived before the first step: save and exit at once
    monkeypatch.setattr(checkpoint, "StopSignal", lambda: stop)
    assert sac.train(cfg, tmp_path) == 130
    monkeypatch.undo()
    assert sac.train(cfg, tmp_path, resume=True) == 0
    assert checkpoint.load(tmp_path / "checkpoint.pt")["step"] == 120
    resumes = yaml.safe_load((tmp_path / "run.yaml").read_text())["resumes"]
    assert resumes[0]["step"] == 0 and "env" in resumes[0]["env_state"]


def test_torch_compiler_stack_is_loaded_before_env_suites():
    """Loaded after jaxlib (HumanoidBench), torch._dynamo segfaults in Adam's constructor."""
    pytest.importorskip("shimmy")
    code = (
        "import sys; from era_control import envs; assert 'torch._dynamo' not in sys.modules; "
        "envs.resolve_env_id('dm_control/cartpole-swingup-v0'); print('torch._dynamo' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "True"
