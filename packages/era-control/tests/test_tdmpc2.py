import sys

import numpy as np
import pytest
import torch
from cli_asserts import InterruptAfter, exit_code, one_line_error, same_agent

from era_control import checkpoint, envs, rng, tdmpc2
from era_control.buffers import SequenceReplayBuffer
from era_control.cli import main
from era_control.logging import read_metrics

# A world model and planner small enough for tests; every other setting is TD-MPC2's.
TINY = ["--model-size", "tiny", "--num-samples", "32", "--num-elites", "4", "--num-pi-trajs", "4",
        "--iterations", "2", "--batch-size", "16", "--no-tensorboard"]  # fmt: skip


def agent(seeds=(0, 1), obs_dim=4, action_dim=2, **overrides):
    settings = {"env": "InvertedPendulum-v5", "model_size": "tiny", "steps": 1000, "learning_starts": 100,
                "num_samples": 32, "num_elites": 4, "num_pi_trajs": 4, "iterations": 2, "batch_size": 16,
                "seeds": len(seeds)} | overrides  # fmt: skip
    cfg = tdmpc2.TDMPC2Config(**settings)
    return tdmpc2.TDMPC2(cfg, rng.generators(seeds), obs_dim, action_dim, torch.device("cpu"))


def train(tmp_path, name, *flags):
    argv = ["train", "tdmpc2", "--env", "InvertedPendulum-v5", *TINY, "--out", str(tmp_path), "--run-name", name, *flags]  # fmt: skip
    return main(argv), tmp_path / name


def metric(run_dir, key, seed=0):
    return [v for _, s, k, v in read_metrics(run_dir / "metrics.csv") if k == key and s == seed]


def test_two_hot_round_trips_and_saturates_at_the_end_bins():
    x = torch.tensor([-500.0, -3.2, -1e-3, 0.0, 0.7, 42.0, 1000.0])
    encoded = tdmpc2.two_hot(x, 101, -10.0, 10.0)
    torch.testing.assert_close(encoded.sum(-1), torch.ones(7))
    assert ((encoded > 0).sum(-1) <= 2).all()
    torch.testing.assert_close(tdmpc2.two_hot_decode(encoded, -10.0, 10.0), x, rtol=1e-4, atol=1e-5)
    beyond = tdmpc2.two_hot(torch.tensor([1e30, -1e30]), 101, -10.0, 10.0)
    assert beyond[0, -1] == 1.0 and beyond[1, 0] == 1.0


@pytest.mark.parametrize("target", [-1.0, 0.3])
def test_era_prior_keeps_the_floor_in_every_latent_and_the_plain_prior_does_not(target):
    latents = torch.randn(2, 500, 16).unflatten(-1, (2, 8)).mul(5).softmax(-1).flatten(-2)
    for era in (True, False):
        a = agent(era=era, **({"target_entropy": target} if era else {}))
        with torch.no_grad():  # push the prior's raw outputs far out, where tanh saturates
            a.pi.linears[-1].weight.mul_(2000.0)
            entropy = a.prior(latents).sample(a.generators).entropy
        if era:
            assert entropy.min() >= 2 * target - 1e-4  # H0 = per dim * 2 dims
        else:
            assert entropy.min() < 2 * -1.0


def test_sequences_stay_within_one_episode_and_survive_the_ring():
    buffer = SequenceReplayBuffer(capacity=50, num_seeds=2, obs_dim=3, action_dim=1, length=3)
    gen = np.random.default_rng(0)
    episode, t = np.zeros(2), np.zeros(2)
    for step in range(137):  # wraps the ring twice; episodes of 1 to ~10 transitions
        done = gen.random(2) < 0.2
        obs = np.stack([episode, t, np.full(2, step)], -1)
        buffer.add(
            obs,
            np.zeros((2, 1)),
            np.zeros(2),
            obs + np.array([0, 1, 1]),
            done & (gen.random(2) < 0.5),
            done,
        )
        episode, t = np.where(done, episode + 1, episode), np.where(done, 0, t + 1)
    batch = buffer.sample_sequences(400, rng.generators([0, 1]))
    assert batch.obs.shape == (2, 4, 400, 3) and batch.action.shape == (2, 3, 400, 1)
    ep, time, step = batch.obs.unbind(-1)
    assert (ep == ep[:, :1]).all()  # one episode per window
    assert (time.diff(dim=1) == 1).all() and (step.diff(dim=1) == 1).all()  # consecutive
    assert (step[:, 0] >= 137 - 50).all()  # nothing overwritten
    assert (batch.terminated[:, :-1] == 0).all()  # an episode can end only at a window's end
    assert len(set(step[0, 0].tolist())) > 10  # and windows are spread over the buffer


def test_sequence_buffer_refuses_to_sample_without_a_whole_episode():
    buffer = SequenceReplayBuffer(capacity=10, num_seeds=1, obs_dim=1, action_dim=1, length=3)
    for _ in range(6):  # episodes of one transition only
        buffer.add(np.zeros((1, 1)), np.zeros((1, 1)), np.zeros(1), np.zeros((1, 1)), np.ones(1), np.ones(1, bool))  # fmt: skip
    with pytest.raises(RuntimeError, match="no episode of 3 transitions"):
        buffer.sample_sequences(4, rng.generators([0]))


def test_planner_beats_random_actions_and_the_model_learns(tmp_path):
    code, run_dir = train(tmp_path, "learn", "--steps", "1000", "--learning-starts", "300",
                          "--eval-every", "1000", "--eval-episodes", "5", "--log-every", "50")  # fmt: skip
    assert code == 0
    planned = metric(run_dir, "eval/return")[-1]
    eval_envs = envs.make_vector_env("InvertedPendulum-v5", 1)
    gen = np.random.default_rng(0)
    uniform = envs.evaluate(lambda o: gen.uniform(-1, 1, (1, 1)), eval_envs, [100_000], 5)[0]
    assert planned > 2 * uniform, (planned, uniform)
    reward = metric(run_dir, "loss/reward")
    assert np.mean(reward[-3:]) < np.mean(reward[:3])
    # The learnt dynamics predict the encoded next observations far better than fresh ones.
    trained, batch = _trained_agent_and_batch(run_dir)
    fresh = tdmpc2.build(trained.cfg, torch.device("cpu")).dynamics.state_dict()
    learnt = _consistency(trained, batch)
    trained.dynamics.load_state_dict(fresh)
    assert learnt < 0.5 * _consistency(trained, batch)
    # The prior that samples sits at or above the floor (H0 = -1 nat for one action dim).
    assert min(metric(run_dir, "entropy/executed_min")) >= -1.0 - 1e-4
    assert set(metric(run_dir, "entropy/target")) == {-1.0}


def _trained_agent_and_batch(run_dir):
    from era_control import config

    cfg = config.load_yaml(tdmpc2.TDMPC2Config, run_dir / "config.yaml")
    state = checkpoint.load(run_dir / "checkpoint.pt")
    trained = tdmpc2.build(cfg, torch.device("cpu"))
    trained.load_state_dict(state["agent"])
    obs_dim, action_dim = envs.env_dims(cfg.env)
    buffer = SequenceReplayBuffer(cfg.steps, 1, obs_dim, action_dim, cfg.horizon)
    buffer.load_state_dict(state["buffer"])
    return trained, buffer.sample_sequences(256, rng.generators([7]))


@torch.no_grad()
def _consistency(a, batch):
    z, error = a.encode(batch.obs[:, 0]), 0.0
    for t in range(a.cfg.horizon):
        z = a.next(z, batch.action[:, t])
        error += float((z - a.encode(batch.obs[:, t + 1])).pow(2).mean())
    return error


@pytest.mark.parametrize("era", ["--era", "--no-era"])
def test_seed_trains_the_same_alone_or_in_an_ensemble(tmp_path, era):
    flags = [
        "--steps",
        "160",
        "--learning-starts",
        "100",
        "--eval-every",
        "160",
        "--eval-episodes",
        "1",
        era,
    ]
    assert train(tmp_path, "two", "--seeds", "2", *flags)[0] == 0
    assert train(tmp_path, "one", "--seeds", "1", *flags)[0] == 0
    two = checkpoint.load(tmp_path / "two" / "checkpoint.pt")["agent"]
    one = checkpoint.load(tmp_path / "one" / "checkpoint.pt")["agent"]
    for key, value in one.items():
        first = (
            2 if key.startswith(("qs.", "target_qs.")) else 1
        )  # the tiny model's 2 Q heads per seed
        torch.testing.assert_close(two[key][:first], value, rtol=0, atol=0, msg=key)
    assert not torch.equal(two["encoder.linears.0.weight"][0], two["encoder.linears.0.weight"][1])


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    flags = ["--steps", "180", "--learning-starts", "100", "--seeds", "2", "--checkpoint-every", "60",
             "--eval-every", "90", "--eval-episodes", "1"]  # fmt: skip
    assert train(tmp_path, "full", *flags)[0] == 0
    monkeypatch.setattr(checkpoint, "StopSignal", lambda: InterruptAfter(checks=131))
    code, run_dir = train(tmp_path, "part", *flags)
    assert code == 130 and checkpoint.load(run_dir / "checkpoint.pt")["step"] == 130
    monkeypatch.undo()
    assert main(["train", "tdmpc2", "--resume", str(run_dir)]) == 0
    same_agent(tmp_path / "full", run_dir, step=180)  # replay, plan warm start and value scale too
    assert main(["eval", str(run_dir), "--episodes", "1"]) == 0
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "curve.png")]) == 0


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--num-elites", "64"], ["num_elites", "at most num_samples=32"]),
        (["--num-pi-trajs", "32"], ["num_pi_trajs", "below num_samples=32"]),
        (["--entropy-coef", "0.1"], ["entropy_coef must be 0 with ERA"]),
        (["--no-era", "--target-entropy", "0.2"], ["target_entropy is ERA's floor"]),
        (["--target-entropy", "0.9"], ["target_entropy"]),
        (["--learning-starts", "2"], ["learning_starts", "horizon=3"]),
        (["--simnorm-dim", "5"], ["simnorm_dim must divide the latent size 16"]),
        (["--rho", "0"], ["rho"]),
    ],
)
def test_bad_settings_are_refused_in_one_line(tmp_path, capsys, flags, fragments):
    argv = [
        "train",
        "tdmpc2",
        "--env",
        "InvertedPendulum-v5",
        *TINY,
        "--out",
        str(tmp_path),
        *flags,
    ]
    assert exit_code(argv) == 2
    one_line_error(capsys, *fragments)
    assert not any(tmp_path.iterdir())


def test_config_defaults_follow_the_episode_length_and_round_trip(tmp_path):
    cfg = tdmpc2.TDMPC2Config(env="InvertedPendulum-v5")  # 1000-step episodes
    assert cfg.discount == pytest.approx(0.995) and cfg.learning_starts == 5000
    assert (
        cfg.entropy_coef == 0.0
        and tdmpc2.TDMPC2Config(env="InvertedPendulum-v5", era=False).entropy_coef == 1e-4
    )
    from era_control import config

    config.save_yaml(cfg, tmp_path / "c.yaml")
    assert config.load_yaml(tdmpc2.TDMPC2Config, tmp_path / "c.yaml") == cfg
