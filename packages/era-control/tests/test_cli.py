"""End to end through the real CLI (in-process ``main``), on tiny budgets."""

import json
import os
import signal
import sys

import pytest
import torch
import yaml
from cli_asserts import InterruptAfter, exit_code, one_line_error, same_agent

from era_control import checkpoint
from era_control.cli import main
from era_core.testing import folder_digest, held_run_dir, help_text

TINY = [
    "--steps", "300", "--learning-starts", "100", "--eval-every", "150", "--eval-episodes", "1",
    "--log-every", "50", "--hidden", "16", "16", "--batch-size", "32", "--no-tensorboard",
]  # fmt: skip


def train(tmp_path, name, *flags):
    code = main(["train", "sac", *TINY, "--out", str(tmp_path), "--run-name", name, *flags])
    return code, tmp_path / name


def metric_keys(run_dir):
    return {line.split(",")[2] for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]}


@pytest.mark.parametrize("era", ["--era", "--no-era"])
@pytest.mark.parametrize("env", ["InvertedPendulum-v5", "Pendulum-v1"])
def test_train_smoke(tmp_path, env, era):
    code, run_dir = train(tmp_path, "run", "--env", env, "--seeds", "2", era)
    assert code == 0
    keys = metric_keys(run_dir)
    assert {
        "charts/episodic_return",
        "eval/return",
        "loss/critic",
        "loss/actor",
        "entropy/executed",
    } <= keys
    assert {"entropy/target", "entropy/executed_min", "action/saturated"} <= keys
    assert ("sac/alpha" in keys) == (era == "--no-era")
    state = checkpoint.load(run_dir / "checkpoint.pt")
    assert state["step"] == 300
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["env"] == env and saved["seeds"] == 2 and saved["era"] == (era == "--era")


def test_train_truncated_normal_paper_preset(tmp_path):
    code, run_dir = train(
        tmp_path, "run", "--env", "InvertedPendulum-v5", "--preset", "paper", "--hidden", "16", "16"
    )
    assert code == 0
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    # Preset values, except where a flag overrides them.
    assert saved["distribution"] == "truncated_normal" and saved["updates_per_step"] == 2
    assert (
        saved["critic_layer_norm"] and saved["activation"] == "elu" and saved["hidden"] == [16, 16]
    )


def test_train_dm_control(tmp_path):
    pytest.importorskip("shimmy")
    pytest.importorskip("dm_control")
    code, run_dir = train(
        tmp_path, "dmc", "--env", "dm_control/cartpole-swingup-v0", "--steps", "200"
    )
    assert code == 0
    assert "eval/return" in metric_keys(run_dir)


def test_config_file_then_flags(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump({"env": "Pendulum-v1", "lr": "1e-3", "gamma": 0.9, "seeds": 2})
    )
    code, run_dir = train(tmp_path, "run", "--config", str(config), "--gamma", "0.95")
    assert code == 0
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["lr"] == 1e-3 and saved["gamma"] == 0.95 and saved["seeds"] == 2


def test_eval_and_plot(tmp_path):
    _, run_a = train(tmp_path, "a", "--env", "Pendulum-v1", "--tensorboard")
    assert list((run_a / "tb" / "seed_0").glob("events.out.tfevents.*"))
    _, run_b = train(tmp_path, "b", "--env", "Pendulum-v1", "--no-era")
    assert main(["eval", str(run_a), "--episodes", "2"]) == 0
    result = json.loads((run_a / "eval.json").read_text())
    assert len(result["returns"]) == 1 and result["returns"][0] < 0  # Pendulum rewards are <= 0
    out = tmp_path / "curves.png"
    assert main(["plot", str(run_a), str(run_b), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--env", "NoSuchEnv-v0"], "env must be a registered gymnasium id"),
        (["--env", "Hoper-v5"], "did you mean"),
        (["--steps", "-5"], "steps must be in [1, inf), got -5"),
        (["--target-entropy", "0.9"], "target_entropy must be in"),
        (["--target-entropy=-inf"], "target_entropy must be in"),
        (["--target-entropy", "nan"], "target_entropy must be in"),
        (["--era", "--distribution", "tanh_normal"], "tanh_normal"),
        (["--log-std-min", "1"], "log_std_min must be in"),
        (["--gamma", "1.0"], "gamma must be in [0, 1)"),
        (["--distribution", "beta"], "distribution must be one of"),
        (["--steps", "1.5"], "steps must be an integer"),
    ],
)
def test_bad_config_is_refused(tmp_path, capsys, flags, message):
    assert exit_code(["train", "sac", "--out", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing was started


def test_unknown_config_key_is_refused(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"learning_rate": 1e-3}))
    assert exit_code(["train", "sac", "--config", str(config), "--out", str(tmp_path)]) == 2
    one_line_error(capsys, "unknown config keys ['learning_rate']")


def test_resume_takes_no_other_flags(tmp_path, capsys):
    _, run_dir = train(tmp_path, "run", "--env", "Pendulum-v1", "--steps", "150")
    capsys.readouterr()
    assert exit_code(["train", "sac", "--resume", str(run_dir), "--gamma", "0.9"]) == 2
    one_line_error(capsys, "--resume continues the saved config", "gamma")


@pytest.mark.parametrize("era", ["--era", "--no-era"])
def test_extended_run_equals_a_fresh_run_of_the_longer_budget(tmp_path, era):
    flags = ["--env", "InvertedPendulum-v5", "--seeds", "2", era]
    assert train(tmp_path, "fresh", *flags)[0] == 0  # TINY: 300 steps
    code, run_dir = train(tmp_path, "extended", *flags, "--steps", "150")
    assert code == 0
    assert main(["train", "sac", "--resume", str(run_dir), "--steps", "300"]) == 0

    same_agent(tmp_path / "fresh", run_dir, step=300)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["steps"] == 300
    # Resuming again needs no flag: config.yaml and the checkpoint agree on the new budget.
    assert main(["train", "sac", "--resume", str(run_dir)]) == 0


def test_extension_is_refused_below_the_steps_done_and_for_ppo(tmp_path, capsys):
    _, run_dir = train(tmp_path, "run", "--env", "Pendulum-v1", "--steps", "150")
    capsys.readouterr()
    assert exit_code(["train", "sac", "--resume", str(run_dir), "--steps", "50"]) == 2
    one_line_error(capsys, "--steps must be at least the 150 steps already done, got 50")
    ppo = ["train", "ppo", "--env", "Pendulum-v1", "--steps", "64", "--num-steps", "32",
           "--num-minibatches", "4", "--hidden", "8", "--no-tensorboard",
           "--out", str(tmp_path), "--run-name", "ppo"]  # fmt: skip
    assert main(ppo) == 0
    capsys.readouterr()
    assert exit_code(["train", "ppo", "--resume", str(tmp_path / "ppo"), "--steps", "128"]) == 2
    one_line_error(capsys, "--steps cannot change on --resume of a ppo run")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("era", ["--era", "--no-era"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, era):
    flags = ["--env", "InvertedPendulum-v5", "--seeds", "2", era, "--checkpoint-every", "70"]
    assert train(tmp_path, "full", *flags)[0] == 0

    # Interrupt mid-way (after a periodic checkpoint, between two others), then resume.
    monkeypatch.setattr(checkpoint, "StopSignal", lambda: InterruptAfter(checks=187))
    code, run_dir = train(tmp_path, "part", *flags)
    assert code == 130
    assert checkpoint.load(run_dir / "checkpoint.pt")["step"] == 186
    monkeypatch.undo()
    assert main(["train", "sac", "--resume", str(run_dir)]) == 0

    same_agent(tmp_path / "full", run_dir, step=300)
    # The logged history is the same too (rows after the interruption were replaced).
    assert (run_dir / "metrics.csv").read_text().count("eval/return") == 2 * 2


def test_stop_signal_catches_a_real_sigint():
    """The stop flag is set by an actual SIGINT and the handlers are restored afterwards."""
    before = signal.getsignal(signal.SIGINT)
    with checkpoint.StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.gpu
def test_train_interrupt_and_resume_on_cuda(tmp_path, monkeypatch):
    flags = ["--env", "Pendulum-v1", "--seeds", "2", "--device", "cuda", "--checkpoint-every", "70"]
    monkeypatch.setattr(checkpoint, "StopSignal", lambda: InterruptAfter(checks=150))
    code, run_dir = train(tmp_path, "gpu", *flags)
    assert code == 130
    monkeypatch.undo()
    assert main(["train", "sac", "--resume", str(run_dir)]) == 0
    state = checkpoint.load(run_dir / "checkpoint.pt")
    assert state["step"] == 300
    assert all(torch.isfinite(v).all() for v in state["agent"].values())


def test_demo_writes_curves_and_table(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        main(["demo", "--out", str(out), "--env", "Pendulum-v1", "--steps", "200", "--seeds", "1"])
        == 0
    )
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"SAC-ERA", "SAC"}
    assert results["SAC-ERA"]["target_entropy"] == pytest.approx(-1.0)  # SAC's target, 1-D
    summary = (out / "summary.md").read_text()
    assert summary.startswith("## era-control") and "](curves.png)" in summary
    assert f"{results['SAC-ERA']['final_mean']:.1f}" in summary  # the sentence uses the numbers
    assert "SAC-ERA" in capsys.readouterr().out


def test_demo_refuses_fewer_steps_than_a_batch(tmp_path, capsys):
    assert exit_code(["demo", "--out", str(tmp_path / "demo"), "--steps", "100"]) == 2
    one_line_error(capsys, "--steps must be at least 128, got 100")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "command", [[], ["train"], ["train", "sac"], ["train", "ppo"], ["eval"], ["plot"], ["demo"]]
)
def test_help_has_no_rst_double_backticks(command):
    # The help shows docstrings, which are reStructuredText.
    out = help_text(main, command)
    assert out.startswith("usage: era-control") and "``" not in out


def test_a_second_process_on_a_run_is_refused_and_changes_nothing(tmp_path, capsys):
    _, run_dir = train(tmp_path, "run", "--env", "Pendulum-v1", "--steps", "150")
    with held_run_dir(run_dir) as pid:
        before = folder_digest(run_dir)
        capsys.readouterr()
        # --resume twice at once, and the same --run-name again (before the first checkpoint it
        # would delete the folder of a killed run, so it must not touch one that is running).
        (run_dir / "checkpoint.pt").rename(tmp_path / "checkpoint.pt")
        before_fresh = folder_digest(run_dir)
        assert exit_code(["train", "sac", *TINY, "--env", "Pendulum-v1", "--out", str(tmp_path),
                          "--run-name", "run"]) == 2  # fmt: skip
        one_line_error(capsys, f"run folder '{run_dir}' is in use by process {pid} ")
        assert folder_digest(run_dir) == before_fresh
        (tmp_path / "checkpoint.pt").rename(run_dir / "checkpoint.pt")
        assert exit_code(["train", "sac", "--resume", str(run_dir), "--steps", "200"]) == 2
        one_line_error(capsys, f"run folder '{run_dir}' is in use by process {pid} ")
        assert folder_digest(run_dir) == before
    # The holder was SIGKILLed: its lock went with it, and the run resumes.
    assert main(["train", "sac", "--resume", str(run_dir), "--steps", "200"]) == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--buffer-size", "50", "--batch-size", "64"], "buffer_size must be in [64, inf), got 50"),
        (["--log-std-max", "nan"], "log_std_max must be in (-inf, inf), got nan"),
        (["--log-std-max", "inf"], "log_std_max must be in (-inf, inf), got inf"),
        (["--log-std-min=-inf"], "log_std_min must be in (-inf, inf), got -inf"),
        (
            ["--learning-starts", "300"],
            "learning_starts must be in [0, 300), got 300 (below steps=300",
        ),
        (
            ["--batch-size", "400", "--buffer-size", "400"],
            "batch_size must be in [1, 300], got 400 (at most steps=300",
        ),
    ],
)
def test_settings_that_would_run_nothing_are_refused(tmp_path, capsys, flags, message):
    train(tmp_path, "run", "--env", "Pendulum-v1", "--steps", "150")
    before = folder_digest(tmp_path)
    capsys.readouterr()
    assert exit_code(["train", "sac", *TINY, "--env", "Pendulum-v1", "--out", str(tmp_path),
                      "--run-name", "run", *flags]) == 2  # fmt: skip
    one_line_error(capsys, message)
    assert folder_digest(tmp_path) == before
