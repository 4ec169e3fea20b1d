import os
import re
from pathlib import Path

import pytest

from era_core.cli import LOCK_FILE, UsageError, debug_requested, hold_run_dir, report_usage_errors
from era_core.testing import folder_digest, held_run_dir


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


def test_bugs_keep_their_traceback() -> None:
    def buggy() -> int:
        raise KeyError("not a usage error")

    with pytest.raises(KeyError):
        report_usage_errors(buggy)


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
