"""Bad input and faults: one line ``error: ...``, exit code 2, no traceback unless ``--debug``."""

import os
import shutil

import pytest
import torch
import yaml
from cli_asserts import exit_code, one_line_error

from era_control.cli import main

TINY = [
    "--env", "Pendulum-v1", "--steps", "120", "--learning-starts", "60", "--eval-every", "120",
    "--eval-episodes", "1", "--hidden", "8", "8", "--batch-size", "16", "--no-tensorboard",
]  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "sac", *TINY, "--out", str(out), "--run-name", "done"]) == 0
    return out / "done"


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return shutil.copytree(finished_run, tmp_path / "run")


def _interrupted(tmp_path, name="part"):
    """A run stopped at its step-0 checkpoint: resumable."""
    from era_control import checkpoint

    run = tmp_path / name
    stop = checkpoint.StopSignal()
    stop.signum = 2
    original, checkpoint.StopSignal = checkpoint.StopSignal, lambda: stop
    try:
        assert main(["train", "sac", *TINY, "--out", str(tmp_path), "--run-name", name]) == 130
    finally:
        checkpoint.StopSignal = original
    return run


@pytest.mark.parametrize("content", [b"", b"\x80\x04garbage", "truncate"])
@pytest.mark.parametrize("command", ["resume", "eval"])
def test_corrupt_checkpoint_is_named(run_copy, capsys, content, command):
    path = run_copy / "checkpoint.pt"
    data = path.read_bytes()[:200] if content == "truncate" else content
    path.write_bytes(data)
    argv = (["train", "sac", "--resume", str(run_copy)] if command == "resume"
            else ["eval", str(run_copy), "--episodes", "1"])  # fmt: skip
    assert exit_code(argv) == 2
    one_line_error(capsys, str(path))


def test_debug_shows_the_traceback(run_copy):
    (run_copy / "checkpoint.pt").write_bytes(b"")
    from era_core.cli import UsageError

    with pytest.raises(UsageError):
        main(["eval", str(run_copy), "--debug"])


def test_half_written_metrics_line_does_not_break_resume(tmp_path):
    run = _interrupted(tmp_path)
    with (run / "metrics.csv").open("a") as file:
        file.write("57,0,loss/cri")  # killed mid-write
    assert main(["train", "sac", "--resume", str(run)]) == 0
    lines = (run / "metrics.csv").read_text().splitlines()
    assert all(len(line.split(",")) == 4 for line in lines)


def test_resume_after_config_edit_is_refused(tmp_path, capsys):
    run = _interrupted(tmp_path)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["gamma"] = 0.9
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert exit_code(["train", "sac", "--resume", str(run)]) == 2
    one_line_error(capsys, "config.yaml", "edited", "gamma")


def test_sac_run_resumed_as_ppo_is_refused(tmp_path, capsys):
    run = _interrupted(tmp_path)
    capsys.readouterr()
    assert exit_code(["train", "ppo", "--resume", str(run)]) == 2
    one_line_error(capsys, "sac run", "train sac --resume")


@pytest.mark.parametrize("episodes", ["0", "-3"])
def test_eval_needs_episodes(finished_run, capsys, episodes):
    assert exit_code(["eval", str(finished_run), "--episodes", episodes]) == 2
    one_line_error(capsys, "--episodes must be at least 1")


@pytest.mark.parametrize("value", ["-inf", "nan", "inf"])
def test_non_finite_target_entropy(tmp_path, capsys, value):
    assert (
        exit_code(["train", "sac", *TINY, "--out", str(tmp_path), f"--target-entropy={value}"]) == 2
    )
    one_line_error(capsys, "target_entropy must be in")
    assert not list(tmp_path.iterdir())


def test_out_pointing_at_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert exit_code(["train", "sac", *TINY, "--out", str(blocker)]) == 2
    one_line_error(capsys, "--out", str(blocker))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_out_not_writable(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert exit_code(["train", "sac", *TINY, "--out", str(locked)]) == 2
    one_line_error(capsys, "--out", str(locked))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_leaves_nothing(tmp_path, capsys):
    assert exit_code(["train", "sac", *TINY, "--out", str(tmp_path), "--device", "cuda"]) == 2
    one_line_error(capsys, "--device cuda", "CUDA")
    assert not list(tmp_path.iterdir())


def test_discrete_env_leaves_no_run_folder(tmp_path, capsys):
    argv = ["train", "sac", "--env", "CartPole-v1", "--out", str(tmp_path), "--run-name", "r"]
    assert exit_code(argv) == 2
    one_line_error(capsys, "CartPole-v1", "continuous")
    assert not list(tmp_path.iterdir())


def test_run_killed_before_its_first_checkpoint_starts_again(tmp_path):
    argv = ["train", "sac", *TINY, "--out", str(tmp_path), "--run-name", "r"]
    # What a kill during setup leaves: config.yaml, run.yaml and a partial log, no checkpoint.
    run = tmp_path / "r"
    run.mkdir()
    (run / "run.yaml").write_text("algo: sac\n")
    (run / "config.yaml").write_text("env: Pendulum-v1\n")
    (run / "metrics.csv").write_text("step,seed,key,value\n5,0,x,1\n")
    assert main(argv) == 0
    assert "5,0,x,1" not in (run / "metrics.csv").read_text()
