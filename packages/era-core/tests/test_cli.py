import pytest

from era_core.cli import UsageError, debug_requested, report_usage_errors


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
