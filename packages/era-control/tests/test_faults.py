"""Bad input and faults: one line ``error: ...``, exit code 2, no traceback unless ``--debug``."""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import typing

import pytest
import torch
import yaml
from cli_asserts import exit_code, one_line_error, same_agent

from era_control import checkpoint, sac
from era_control.cli import main
from era_control.runs import ALGORITHMS
from era_core.testing import failing_torch_save, folder_digest, run_digest

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


def _interrupted(tmp_path, name="part", flags=()):
    """A run stopped at its step-0 checkpoint: resumable."""
    run = tmp_path / name
    stop = checkpoint.StopSignal()
    stop.signum = 2
    original, checkpoint.StopSignal = checkpoint.StopSignal, lambda: stop
    try:
        argv = ["train", "sac", *TINY, "--out", str(tmp_path), "--run-name", name, *flags]
        assert main(argv) == 130
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


@pytest.fixture
def killed(tmp_path):
    """What a run killed before its first checkpoint leaves (no checkpoint.pt), and a user's file."""
    run = tmp_path / "r"
    (run / "tb" / "seed_0").mkdir(parents=True)
    (run / "tb" / "seed_0" / "events").write_bytes(b"old events")
    (run / "run.yaml").write_text("algo: sac\n")
    (run / "config.yaml").write_text("env: Pendulum-v1\n")
    (run / "metrics.csv").write_text("step,seed,key,value\n5,0,x,1\n")
    (run / ".checkpoint.pt.k1ll.tmp").write_bytes(b"half a checkpoint")  # killed mid-write
    (run / "notes.txt").write_text("mine\n")
    return run


def _again(run, *flags):
    return ["train", "sac", *TINY, "--out", str(run.parent), "--run-name", run.name, *flags]


def _free_space(monkeypatch, free):
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=free))


BUFFER_BYTES = 120 * (2 * 3 + 1 + 2) * 4  # TINY on Pendulum: 120 transitions, 1 seed, float32


def test_run_killed_before_its_first_checkpoint_starts_again(killed):
    assert main(_again(killed)) == 0
    assert "5,0,x,1" not in (killed / "metrics.csv").read_text()
    # The old run's entries are gone (at the first checkpoint), the user's file is not.
    assert sorted(p.name for p in killed.iterdir()) == [
        ".lock", "checkpoint.pt", "config.yaml", "metrics.csv", "notes.txt", "run.yaml",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--gamma", "1"], "gamma must be in [0, 1)"),
        (["--learning-starts", "120"], "learning_starts must be in [0, 120), got 120"),
        (["--env", "CartPole-v1"], "continuous (Box) actions required"),
        (["--env", "NoSuchEnv-v0"], "registered gymnasium id"),
        (["--device", "cuda:7"], "--device cuda:7: "),  # no CUDA here, or not 8 devices
        (["--save-buffer", "true"], "--save-buffer true: the replay buffer does not fit twice"),
    ],
)
def test_refused_settings_leave_a_killed_run_untouched(killed, capsys, monkeypatch, flags, message):
    _free_space(monkeypatch, 2 * BUFFER_BYTES - 1)
    before = folder_digest(killed.parent)
    assert exit_code(_again(killed, *flags)) == 2
    one_line_error(capsys, message)
    assert folder_digest(killed.parent) == before  # not even a lock file: refused before it


def _fail_at_first_update(monkeypatch):
    def update(self, batch):
        raise RuntimeError("crash in the new run")

    monkeypatch.setattr(sac.SAC, "update", update)


def test_a_new_run_that_fails_before_its_first_checkpoint_brings_the_killed_run_back(
    killed, monkeypatch
):
    before = run_digest(killed)
    _fail_at_first_update(monkeypatch)  # step 60, no checkpoint before the end (step 120)
    with pytest.raises(RuntimeError, match="crash in the new run"):
        main(_again(killed))
    assert run_digest(killed) == before


def test_the_first_checkpoint_of_the_new_run_deletes_the_killed_run(killed, monkeypatch):
    _fail_at_first_update(monkeypatch)  # step 60, after the first checkpoint (step 30)
    with pytest.raises(RuntimeError, match="crash in the new run"):
        main(_again(killed, "--checkpoint-every", "30"))
    assert checkpoint.load(killed / "checkpoint.pt")["step"] == 30
    assert sorted(p.name for p in killed.iterdir()) == [
        ".lock", "checkpoint.pt", "config.yaml", "metrics.csv", "notes.txt", "run.yaml",
    ]  # fmt: skip
    assert "5,0,x,1" not in (killed / "metrics.csv").read_text()


def test_the_buffer_is_saved_by_default_and_its_size_said(tmp_path, capsys):
    assert main(["train", "sac", *TINY, "--out", str(tmp_path), "--run-name", "r"]) == 0
    assert "replay buffer in checkpoints: 4.2 KiB (--save-buffer true)\n" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["save_buffer"] is True
    assert "resume" not in yaml.safe_load((tmp_path / "r" / "run.yaml").read_text())
    buffer = checkpoint.load(tmp_path / "r" / "checkpoint.pt")["buffer"]
    assert sum(v.nbytes for v in buffer.values() if torch.is_tensor(v)) == BUFFER_BYTES


@pytest.mark.parametrize(
    ("flags", "free", "why"),
    [
        (["--save-buffer", "false"], None, "(--save-buffer false)"),
        ([], 2 * BUFFER_BYTES - 1, "(it does not fit twice (4.2 KiB per checkpoint, 8.4 KiB free"),
    ],
)
def test_a_run_without_its_buffer_says_so_and_records_each_approximate_resume(
    tmp_path, capsys, monkeypatch, flags, free, why
):
    if free is not None:
        _free_space(monkeypatch, free)
    run = _interrupted(tmp_path, flags=flags)
    err = capsys.readouterr().err
    assert f"warning: checkpoints leave the 4.2 KiB replay buffer out {why}" in err
    assert yaml.safe_load((run / "config.yaml").read_text())["save_buffer"] is False
    assert yaml.safe_load((run / "run.yaml").read_text())["resume"].startswith("approximate: ")
    assert main(["train", "sac", "--resume", str(run)]) == 0
    assert "warning: replay buffer not in the checkpoint (save_buffer: false)" in (
        capsys.readouterr().err
    )
    (resume,) = yaml.safe_load((run / "run.yaml").read_text())["resumes"]
    assert resume["step"] == 0 and "refilled from scratch" in resume["replay_buffer"]


def _flag(name, value, switch):
    """The flag that sets field ``name`` to ``value`` (``switch``: a plain bool field)."""
    flag = "--" + name.replace("_", "-")
    if switch:
        return [flag if value else f"--no-{flag[2:]}"]
    if isinstance(value, list | tuple):
        return [flag, *map(str, value)]
    return [flag, "none" if value is None else str(value)]


@pytest.mark.parametrize("algo", ["sac", "ppo"])
def test_resume_refuses_every_setting_but_the_budget_by_name(run_copy, capsys, algo):
    """A resumed run cannot apply new settings (its optimizers, buffer and schedules hold the
    old ones), so it refuses each, even one equal to the saved value; --steps is tested apart."""
    # The SAC run's own values (SAC's default distribution, None, has no flag); PPO's defaults.
    saved = yaml.safe_load((run_copy / "config.yaml").read_text()) if algo == "sac" else {}
    cls = ALGORITHMS[algo].config
    values = {f.name: saved.get(f.name, f.default) for f in dataclasses.fields(cls)}
    del values["steps"]
    types = typing.get_type_hints(cls)
    flags = [arg for name, v in values.items() for arg in _flag(name, v, types[name] is bool)]
    before = folder_digest(run_copy)
    assert exit_code(["train", algo, "--resume", str(run_copy), *flags]) == 2
    line = one_line_error(capsys, "--resume continues the saved config")
    assert all(f"'{name}'" in line for name in values), line
    assert folder_digest(run_copy) == before


PPO_TINY = [
    "--env", "Pendulum-v1", "--steps", "256", "--num-envs", "2", "--num-steps", "32",
    "--num-minibatches", "4", "--update-epochs", "1", "--hidden", "8", "8", "--eval-episodes", "1",
    "--no-tensorboard",
]  # fmt: skip


# `train ...` in a process that SIGKILLs itself halfway through writing the checkpoint of
# step argv[1] or later.
KILLED_WHILE_SAVING = """
import sys, torch
from era_core.testing import failing_torch_save
from era_control.cli import main
torch.set_num_threads(1)  # as the tests' own processes (conftest): the same float sums
torch.save = failing_torch_save(int(sys.argv[1]), "kill")
main(sys.argv[2:])
"""

CHECKPOINTED = [
    ("sac", [*TINY, "--checkpoint-every", "40"], 80),
    ("ppo", [*PPO_TINY, "--checkpoint-every", "64"], 128),
]


@pytest.mark.parametrize(("algo", "flags", "fail_from"), CHECKPOINTED)
def test_a_full_disk_keeps_the_last_checkpoint_and_the_run_resumes_exactly(
    tmp_path, capsys, monkeypatch, algo, flags, fail_from
):
    assert main(["train", algo, *flags, "--out", str(tmp_path), "--run-name", "full"]) == 0
    monkeypatch.setattr(torch, "save", failing_torch_save(fail_from, "disk-full"))
    capsys.readouterr()
    run = tmp_path / "part"
    assert exit_code(["train", algo, *flags, "--out", str(tmp_path), "--run-name", "part"]) == 2
    one_line_error(capsys, "No space left on device", str(run / "checkpoint.pt"), "MiB free")
    assert checkpoint.load(run / "checkpoint.pt")["step"] == fail_from // 2  # the one before
    assert not list(run.glob(".*.tmp"))
    monkeypatch.undo()
    assert main(["train", algo, "--resume", str(run)]) == 0
    full = checkpoint.load(tmp_path / "full" / "checkpoint.pt")["step"]
    same_agent(tmp_path / "full", run, step=full)


@pytest.mark.parametrize(("algo", "flags", "fail_from"), CHECKPOINTED)
def test_a_kill_while_checkpointing_keeps_the_last_checkpoint_and_the_run_resumes_exactly(
    tmp_path, algo, flags, fail_from
):
    assert main(["train", algo, *flags, "--out", str(tmp_path), "--run-name", "full"]) == 0
    run = tmp_path / "part"
    argv = ["train", algo, *flags, "--out", str(tmp_path), "--run-name", "part"]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_SAVING, str(fail_from), *argv],
        capture_output=True,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    assert checkpoint.load(run / "checkpoint.pt")["step"] == fail_from // 2
    assert main(["train", algo, "--resume", str(run)]) == 0
    full = checkpoint.load(tmp_path / "full" / "checkpoint.pt")["step"]
    same_agent(tmp_path / "full", run, step=full)
