import errno
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

import pytest

from era_core.cli import (
    LOCK_FILE,
    REPORT_BUGS_AT,
    SET_ASIDE_DIR,
    ArgumentParser,
    UsageError,
    debug_requested,
    hold_run_dir,
    read_parsed,
    replacing_run,
    report_usage_errors,
    write_atomically,
)
from era_core.testing import folder_digest, held_run_dir, run_digest


def _fail() -> int:
    raise UsageError("--episodes must be >= 1, got 0 (era-control eval)")


def test_usage_error_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert report_usage_errors(_fail) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: --episodes must be >= 1, got 0 (era-control eval)\n"
    assert captured.out == ""


def test_debug_reraises_with_traceback() -> None:
    with pytest.raises(UsageError, match="episodes"):
        report_usage_errors(_fail, debug=True)


def test_bugs_keep_their_traceback_with_a_note_asking_for_a_report() -> None:
    def buggy() -> int:
        raise KeyError("not a usage error")

    with pytest.raises(KeyError) as raised:
        report_usage_errors(buggy, program="era-control")
    assert "bug in era-control" in raised.value.__notes__[0]
    assert REPORT_BUGS_AT in raised.value.__notes__[0]


def test_what_the_system_refuses_about_a_path_is_one_line_however_deep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"

    def read_config() -> int:
        try:
            missing.read_text()
        except OSError as error:  # a library wrapping it in its own error type
            raise RuntimeError("could not load the config") from error
        return 0

    assert report_usage_errors(read_config) == 2
    assert capsys.readouterr().err == f"error: No such file or directory: {missing}\n"
    with pytest.raises(RuntimeError):
        report_usage_errors(read_config, debug=True)


def _fill_then_fail(file: BinaryIO) -> None:
    file.write(b"half a checkpoint")
    file.flush()
    raise RuntimeError("unexpected pos") from OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_atomic_write_keeps_the_old_file_and_names_the_path_and_free_space(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "checkpoint.pt"
    write_atomically(path, lambda file: file.write(b"old"))

    def save() -> int:
        write_atomically(path, _fill_then_fail)
        return 0

    assert report_usage_errors(save) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: No space left on device: {path} (") and err.count("\n") == 1
    assert "MiB free there)" in err
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_an_atomic_write_killed_midway_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    write_atomically(path, lambda file: file.write(b"old"))
    script = (
        "import os, signal, sys\n"
        "from era_core.cli import write_atomically\n"
        "def write(file):\n"
        "    file.write(b'half'); file.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "write_atomically(sys.argv[1], write)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], check=False)
    assert done.returncode == -signal.SIGKILL
    assert path.read_bytes() == b"old"
    write_atomically(
        path, lambda file: file.write(b"new")
    )  # the killed write's temp file is no obstacle
    assert path.read_bytes() == b"new"


def test_a_bad_command_line_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    parser = ArgumentParser(prog="tool")
    parser.add_argument("--steps", type=int)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run").add_argument("--lr", type=float)
    for argv, named in ((["--steps", "x"], "--steps"), (["run", "--lr", "y"], "--lr")):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(argv)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: argument " + named), err
        assert "--help" in err and "usage:" not in err


def test_a_file_that_does_not_parse_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    def parse(text: str) -> int:
        if not text.isdigit():
            raise ValueError(f"not digits at column {len(text)}")
        return int(text)

    (tmp_path / "good").write_text("12")
    assert read_parsed(tmp_path / "good", parse, (ValueError,), "digits") == 12
    (tmp_path / "bad").write_text("1x")
    with pytest.raises(UsageError, match=r"'.*bad' is not valid digits: not digits at column 2"):
        read_parsed(tmp_path / "bad", parse, (ValueError,), "digits")
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    with pytest.raises(UsageError, match=r"binary' is not valid digits"):
        read_parsed(tmp_path / "binary", parse, (ValueError,), "digits")
    with pytest.raises(FileNotFoundError):  # reported by report_usage_errors, naming the path
        read_parsed(tmp_path / "missing", parse, (ValueError,), "digits")


def test_exit_code_passes_through() -> None:
    assert report_usage_errors(lambda: 0) == 0
    assert report_usage_errors(lambda: 130) == 130


def test_debug_requested(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ERA_DEBUG", raising=False)
    assert not debug_requested(["train", "sac"])
    assert debug_requested(["train", "--debug"])
    monkeypatch.setenv("ERA_DEBUG", "0")
    assert not debug_requested([])
    monkeypatch.setenv("ERA_DEBUG", "1")
    assert debug_requested([])


def test_hold_run_dir_creates_the_folder_and_records_the_pid(tmp_path: Path) -> None:
    with hold_run_dir(tmp_path / "new" / "run") as folder:
        assert folder == tmp_path / "new" / "run"
        assert (folder / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    with hold_run_dir(folder):  # released when the block ended
        pass


def test_a_second_owner_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text("step,loss\n1,0.5\n")
    with held_run_dir(tmp_path) as pid:
        before = folder_digest(tmp_path)
        message = re.escape(f"run folder '{tmp_path}' is in use by process {pid} ")
        with pytest.raises(UsageError, match=message), hold_run_dir(tmp_path):
            pytest.fail("the block must not run")
        assert folder_digest(tmp_path) == before
    # In this process too, a second lock is refused.
    mine = f"process {os.getpid()} "
    with hold_run_dir(tmp_path), pytest.raises(UsageError, match=mine), hold_run_dir(tmp_path):
        pytest.fail("the block must not run")


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    with held_run_dir(tmp_path) as pid:  # SIGKILLed when the block ends
        assert (tmp_path / LOCK_FILE).read_text() == f"{pid}\n"
    with hold_run_dir(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_an_unwritable_run_folder_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with (
        pytest.raises(UsageError, match="cannot write to the run folder"),
        hold_run_dir(tmp_path / "a-file" / "run"),
    ):
        pytest.fail("the block must not run")


RUN_ENTRIES = ("checkpoints", "metrics.csv", "config.yaml", "tb")


def _old_run(folder: Path) -> dict[str, str]:
    """An old run (and a user's log beside it) in ``folder``; its digest without the lock."""
    (folder / "checkpoints" / "step-10").mkdir(parents=True)
    (folder / "checkpoints" / "step-10" / "weights.bin").write_bytes(b"old weights")
    (folder / "metrics.csv").write_text("step,loss\n10,0.5\n")
    (folder / "config.yaml").write_text("lr: 0.001\n")
    (folder / "nohup.log").write_text("the user's own file\n")
    return run_digest(folder)


def _new_run(folder: Path) -> None:
    (folder / "config.yaml").write_text("lr: 0.05\n")
    (folder / "tb").mkdir()
    (folder / "tb" / "events").write_text("new")


def _replace(folder: Path, error: BaseException, *, checkpointed: bool = False) -> None:
    """A new run over the old one in ``folder`` that raises ``error`` (after its checkpoint)."""
    with replacing_run(folder, RUN_ENTRIES) as done:
        assert not (folder / "checkpoints").exists()
        assert (folder / "nohup.log").exists()  # not a run entry: never moved
        _new_run(folder)
        if checkpointed:
            done()
            assert not (folder / SET_ASIDE_DIR).exists()
        raise error


def test_a_replaced_run_comes_back_when_the_new_one_fails(tmp_path: Path) -> None:
    with hold_run_dir(tmp_path):
        before = _old_run(tmp_path)
        with pytest.raises(UsageError, match="bad model"):
            _replace(tmp_path, UsageError("bad model"))
        assert run_digest(tmp_path) == before
        assert not (tmp_path / SET_ASIDE_DIR).exists()


def test_a_replaced_run_goes_once_the_new_one_has_a_checkpoint(tmp_path: Path) -> None:
    with hold_run_dir(tmp_path):
        _old_run(tmp_path)
        with pytest.raises(KeyboardInterrupt):
            _replace(tmp_path, KeyboardInterrupt(), checkpointed=True)
        assert (tmp_path / "config.yaml").read_text() == "lr: 0.05\n"
        entries = sorted(p.name for p in tmp_path.iterdir())
        assert entries == [LOCK_FILE, "config.yaml", "nohup.log", "tb"]


def test_a_new_run_that_ends_normally_replaces_the_old(tmp_path: Path) -> None:
    with hold_run_dir(tmp_path):
        _old_run(tmp_path)
        with replacing_run(tmp_path, RUN_ENTRIES):
            _new_run(tmp_path)
        assert not (tmp_path / "checkpoints").exists()
        assert not (tmp_path / SET_ASIDE_DIR).exists()


def test_nothing_is_set_aside_in_an_empty_folder(tmp_path: Path) -> None:
    with hold_run_dir(tmp_path):
        with replacing_run(tmp_path, RUN_ENTRIES):
            assert not (tmp_path / SET_ASIDE_DIR).exists()
        _new_run(tmp_path)
        with pytest.raises(RuntimeError), replacing_run(tmp_path, ()):
            raise RuntimeError
        assert (tmp_path / "tb").exists()  # nothing was named: nothing moved or deleted


def test_a_replacement_killed_outright_is_undone_by_the_next_owner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _old_run(tmp_path)
    code = (
        "import os, pathlib, signal, sys\n"
        "from era_core.cli import hold_run_dir, replacing_run\n"
        "run = pathlib.Path(sys.argv[1])\n"
        f"with hold_run_dir(run), replacing_run(run, {RUN_ENTRIES!r}):\n"
        "    (run / 'config.yaml').write_text('lr: 0.05')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False)
    assert killed.returncode == -9
    assert (tmp_path / SET_ASIDE_DIR).is_dir()
    with hold_run_dir(tmp_path):
        assert run_digest(tmp_path) == before
    assert "the earlier run's files are back" in capsys.readouterr().err


def test_a_kill_while_setting_aside_deletes_nothing_of_the_old_run(tmp_path: Path) -> None:
    before = _old_run(tmp_path)
    # As a kill between two renames leaves it: one entry moved, no names recorded yet.
    (tmp_path / SET_ASIDE_DIR / "files").mkdir(parents=True)
    (tmp_path / "checkpoints").rename(tmp_path / SET_ASIDE_DIR / "files" / "checkpoints")
    with hold_run_dir(tmp_path):
        assert run_digest(tmp_path) == before


def test_a_failed_move_puts_back_what_had_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _old_run(tmp_path)
    real_rename = Path.rename

    def rename(self: Path, target: Path) -> Path:
        if self.name == "metrics.csv":  # the second entry to move (names are sorted)
            raise PermissionError(13, "Permission denied")
        return real_rename(self, target)

    with hold_run_dir(tmp_path):
        monkeypatch.setattr(Path, "rename", rename)
        with pytest.raises(PermissionError), replacing_run(tmp_path, RUN_ENTRIES):
            pytest.fail("the block must not run")
        monkeypatch.undo()
        assert run_digest(tmp_path) == before
        assert not (tmp_path / SET_ASIDE_DIR).exists()
