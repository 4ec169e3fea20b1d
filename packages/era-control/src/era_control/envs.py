"""Environment construction, exact env snapshots for resume, and deterministic evaluation.

Every env is wrapped the same way: dict observations flattened (DeepMind Control),
observations cast to float32, actions rescaled to ``[-1, 1]``. Ids are resolved with
optional suites loaded on demand: ``dm_control/<domain>-<task>-v0`` through shimmy (the
``era-control[dmc]`` extra) and HumanoidBench (``h1hand-walk-v0``, ...) when
``humanoid_bench`` is importable.
"""

import difflib
import functools
import importlib
import io
import os
import pickle
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec
from gymnasium.utils import EzPickle

__all__ = [
    "Restored",
    "env_dims",
    "evaluate",
    "final_observations",
    "make_env",
    "make_vector_env",
    "resolve_env_id",
    "restore_envs",
    "snapshot_envs",
]

_HUMANOIDBENCH = re.compile(r"^(h1|h1hand|h1simplehand|h1strong|h1touch|g1)-[\w-]+-v\d+$")
HUMANOIDBENCH_HELP = (
    "HumanoidBench is not on PyPI: install it from its repository "
    "(github.com/carlosferrazza/humanoid-bench) with `pip install -e .`, pinned to the combination "
    "measured to work: gymnasium 1.4, mujoco==3.1.6, dm_control==1.0.20"
)


def _import_suite(env_id: str) -> None:
    """Import the package that registers ``env_id``'s suite, or explain how to install it."""
    if env_id.startswith("dm_control/") or _HUMANOIDBENCH.match(env_id):
        # torch's compiler stack must be loaded before suites that pull in jax (HumanoidBench):
        # imported lazily after jaxlib, it segfaults in torch.optim.Adam's constructor.
        importlib.import_module("torch._dynamo")
    if env_id.startswith("dm_control/"):
        # Headless machines: keep dm_control from probing for a display (we never render).
        if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
            os.environ["MUJOCO_GL"] = "disable"
        try:
            importlib.import_module("shimmy")
            importlib.import_module("dm_control")
        except ImportError:
            raise ValueError(
                f"env {env_id!r} needs DeepMind Control: pip install 'era-control[dmc]' "
                "(Python <= 3.12: dm_control's labmaze has no wheel for later Pythons)"
            ) from None
    elif _HUMANOIDBENCH.match(env_id) and env_id not in gym.registry:
        try:
            importlib.import_module("humanoid_bench")
        except ImportError:
            raise ValueError(
                f"env {env_id!r} is a HumanoidBench task. {HUMANOIDBENCH_HELP}"
            ) from None


def resolve_env_id(env_id: str) -> EnvSpec:
    """The registered spec of ``env_id``, loading optional suites first.

    Raises:
        ValueError: Unknown id (with close matches), or a suite that is not installed.
    """
    _import_suite(env_id)
    try:
        return gym.spec(env_id)
    except gym.error.Error:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"env must be a registered gymnasium id, got {env_id!r}{hint}") from None


class _FlatFloat32Observation(gym.ObservationWrapper):
    """Flatten (dict) observations into one float32 vector."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._source = env.observation_space
        flat = gym.spaces.flatten_space(env.observation_space)
        if not isinstance(flat, gym.spaces.Box):  # Graph and Sequence spaces do not flatten
            raise ValueError(f"observations must flatten to a vector, got {env.observation_space}")
        self.observation_space = gym.spaces.Box(
            flat.low.astype(np.float32), flat.high.astype(np.float32), flat.shape, np.float32
        )

    def observation(self, observation: object) -> np.ndarray:
        # A space that flattens to a Box flattens its samples to arrays.
        flat = cast(np.ndarray, gym.spaces.flatten(self._source, observation))
        return flat.astype(np.float32)


class _UnitAction(gym.ActionWrapper):
    """Accept actions in ``[-1, 1]`` and map them affinely onto the env's bounds."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.action_space
        assert isinstance(space, gym.spaces.Box)  # make_env checks it, with a clear error
        self._low, self._high = space.low.astype(np.float64), space.high.astype(np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, space.shape, np.float32)

    def action(self, action: np.ndarray) -> np.ndarray:
        unit = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)  # float rounding only
        return (self._low + 0.5 * (unit + 1.0) * (self._high - self._low)).astype(
            self.env.action_space.dtype
        )


def make_env(env_id: str) -> gym.Env:
    """One env with flat float32 observations and actions in ``[-1, 1]``.

    The wrappers are plain classes (gymnasium's use closures), so envs can be snapshotted.

    Raises:
        ValueError: Unknown id, a missing suite, observations that do not flatten to a vector,
            or an action space that cannot be rescaled.
    """
    resolve_env_id(env_id)
    env = gym.make(env_id)
    if not isinstance(env.action_space, gym.spaces.Box):
        raise ValueError(
            f"env {env_id!r}: continuous (Box) actions required, got {env.action_space}"
        )
    if not (np.isfinite(env.action_space.low).all() and np.isfinite(env.action_space.high).all()):
        raise ValueError(f"env {env_id!r}: action bounds must be finite to rescale to [-1, 1]")
    return _UnitAction(_FlatFloat32Observation(env))


def env_dims(env_id: str) -> tuple[int, int]:
    """Observation and action sizes of ``env_id`` (as wrapped by :func:`make_env`)."""
    env = make_env(env_id)
    dims = gym.spaces.flatdim(env.observation_space), gym.spaces.flatdim(env.action_space)
    env.close()
    return dims


def make_vector_env(env_id: str, num_envs: int) -> gym.vector.SyncVectorEnv:
    """``num_envs`` copies of :func:`make_env` stepped in one process.

    Autoreset happens in the same step (``AutoresetMode.SAME_STEP``): the returned observation
    of an env that just finished is the first of its next episode, and the true final
    observation is in ``info["final_obs"]`` (see :func:`final_observations`).
    """
    resolve_env_id(env_id)
    return gym.vector.SyncVectorEnv(
        [functools.partial(make_env, env_id)] * num_envs,
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


def final_observations(next_obs: np.ndarray, done: np.ndarray, info: dict) -> np.ndarray:
    """The observation each transition really ended in: ``final_obs`` where an episode ended."""
    real = next_obs.copy()
    for i in np.flatnonzero(done):
        real[i] = info["final_obs"][i]
    return real


# Snapshots. MuJoCo envs pickle through EzPickle, which rebuilds a *fresh* env from the
# constructor arguments; an exact resume needs the simulator state, the env's RNG and the
# wrappers' counters instead. This pickler stores such objects by their __dict__ (MjModel,
# MjData and dm_control physics pickle their full state themselves) and specs by id.


def _restore_dict(obj: object, state: dict) -> None:
    obj.__dict__.update(state)


class _SnapshotPickler(pickle.Pickler):
    def reducer_override(self, obj: object):
        if isinstance(obj, EzPickle):
            return object.__new__, (type(obj),), obj.__dict__.copy(), None, None, _restore_dict
        if isinstance(obj, EnvSpec):
            return gym.spec, (obj.id,)
        return NotImplemented


def snapshot_envs(envs: gym.vector.SyncVectorEnv) -> dict[str, Any]:
    """Serialise a vector env's state, as exactly as the envs allow; never fails.

    - ``kind="pickle"``: the whole vector env with its simulator, RNG and wrapper state (exact).
    - ``kind="mujoco"``: when pickling fails (e.g. HumanoidBench holds ctypes pointers), each
      MuJoCo env's ``qpos``, ``qvel``, ``act``, ``time``, its RNG and time-limit counter.
    - ``kind="none"``: neither works; a resume starts fresh episodes.
    ``reason`` says why pickling failed.
    """
    buffer = io.BytesIO()
    try:
        _SnapshotPickler(buffer).dump(envs)
        return {"kind": "pickle", "data": buffer.getvalue()}
    except Exception as error:
        reason = f"{type(error).__name__}: {error}"
    states = [_mujoco_state(env) for env in envs.envs]
    if all(state is not None for state in states):
        return {"kind": "mujoco", "states": states, "reason": reason}
    return {"kind": "none", "reason": reason}


def _time_limit(env: gym.Env) -> gym.wrappers.TimeLimit | None:
    while True:
        if isinstance(env, gym.wrappers.TimeLimit):
            return env
        if not isinstance(env, gym.Wrapper):
            return None
        env = env.env


def _mujoco_state(env: gym.Env) -> dict[str, Any] | None:
    """MuJoCo simulator state, RNG and time-limit counter of one env, or None if not MuJoCo."""
    data = getattr(env.unwrapped, "data", None)
    if data is None or not all(hasattr(data, k) for k in ("qpos", "qvel", "act", "time")):
        return None
    limit = _time_limit(env)
    return {
        "qpos": np.array(data.qpos), "qvel": np.array(data.qvel), "act": np.array(data.act),
        "time": float(data.time), "rng": env.unwrapped.np_random.bit_generator.state,
        "elapsed_steps": None if limit is None else limit._elapsed_steps,
    }  # fmt: skip


def _set_mujoco_state(env: gym.Env, state: dict[str, Any]) -> None:
    import mujoco

    base: Any = env.unwrapped  # duck-typed as in _mujoco_state: any env with MuJoCo's model/data
    base.data.qpos[:], base.data.qvel[:], base.data.act[:] = (
        state["qpos"],
        state["qvel"],
        state["act"],
    )
    base.data.time = state["time"]
    # Derived quantities from the restored state. (mujoco ships no stubs: pyright cannot see the
    # functions it star-imports from its compiled modules.)
    mujoco.mj_forward(base.model, base.data)  # pyright: ignore[reportAttributeAccessIssue]
    generator = np.random.Generator(getattr(np.random, state["rng"]["bit_generator"])())
    generator.bit_generator.state = state["rng"]
    base.np_random = generator
    limit = _time_limit(env)
    if limit is not None:
        limit._elapsed_steps = state["elapsed_steps"]


class Restored(NamedTuple):
    """What :func:`restore_envs` rebuilt.

    ``note`` is ``None`` when the envs continue exactly; otherwise it says what was lost (for
    ``run.yaml``). ``obs`` is set only when fresh episodes had to be started: the caller must
    use these observations and restart its episode statistics.
    """

    envs: gym.vector.SyncVectorEnv
    note: str | None
    obs: np.ndarray | None


def restore_envs(
    snapshot: dict[str, Any] | bytes, env_id: str, num_envs: int, seeds: Sequence[int]
) -> Restored:
    """Rebuild envs from :func:`snapshot_envs`; ``seeds`` reset them when the state is not exact."""
    resolve_env_id(env_id)  # registers the suite the snapshot refers to
    if isinstance(snapshot, bytes):  # checkpoints written before snapshots had a kind
        snapshot = {"kind": "pickle", "data": snapshot}
    if snapshot["kind"] == "pickle":
        return Restored(pickle.loads(snapshot["data"]), None, None)
    vector = make_vector_env(env_id, num_envs)
    obs, _ = vector.reset(seed=list(seeds))
    if snapshot["kind"] == "mujoco":
        for env, state in zip(vector.envs, snapshot["states"], strict=True):
            _set_mujoco_state(env, state)
        note = "env not picklable: restored MuJoCo qpos/qvel/act/time, RNG and time-limit counters only"
        return Restored(vector, f"{note} ({snapshot['reason']})", None)
    note = "env state not restored (not picklable, not MuJoCo): fresh episodes started"
    return Restored(vector, f"{note} ({snapshot['reason']})", obs)


def evaluate(
    policy: Callable[[np.ndarray], np.ndarray],
    envs: gym.vector.SyncVectorEnv,
    seeds: Sequence[int],
    episodes: int,
) -> np.ndarray:
    """Mean undiscounted return of ``episodes`` episodes per env, shape ``(num_envs,)``.

    Episode ``k`` of env ``i`` starts from ``reset(seed=seeds[i] + k)``, so evaluations are
    reproducible and never touch the training envs or generators.

    Args:
        policy: Maps a batch of observations ``(num_envs, obs_dim)`` to actions in ``[-1, 1]``;
            a policy with a ``reset()`` method (a planner that warm-starts from its last
            plan) is reset whenever the envs start their episodes.
        envs: A vector env from :func:`make_vector_env`, used for evaluation only.
        seeds: One base reset seed per env.
        episodes: Episodes per env.
    """
    returns = np.zeros((episodes, envs.num_envs))
    for k in range(episodes):
        obs, _ = envs.reset(seed=[int(s) + k for s in seeds])
        if (reset := getattr(policy, "reset", None)) is not None:
            reset()
        running = np.ones(envs.num_envs, dtype=bool)
        while running.any():
            obs, reward, terminated, truncated, _ = envs.step(policy(obs))
            returns[k] += np.where(running, reward, 0.0)
            running &= ~(terminated | truncated)
    return returns.mean(0)
