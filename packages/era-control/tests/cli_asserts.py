"""Assertions on the ``era-control`` command line shared by the CLI, PPO, TD-MPC2 and fault tests."""

import os
import signal

import torch

from era_control import checkpoint
from era_control.cli import main


def exit_code(argv):
    """``main``'s exit code, whether argparse (parse errors) or main itself returns it."""
    try:
        return main(argv)
    except SystemExit as exit_info:
        return exit_info.code


def one_line_error(capsys, *fragments):
    """The convention: stderr is exactly one line ``error: ...`` naming the problem, no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "step/s" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], err
    return lines[0]


def same_agent(expected_run, run, step):
    """Both runs' checkpoints are at ``step`` with bit-identical agents; returns them loaded."""
    expected = checkpoint.load(expected_run / "checkpoint.pt")
    actual = checkpoint.load(run / "checkpoint.pt")
    assert actual["step"] == expected["step"] == step
    assert set(expected["agent"]) == set(actual["agent"])
    for key, value in expected["agent"].items():
        torch.testing.assert_close(actual["agent"][key], value, rtol=0, atol=0, msg=key)
    return expected, actual


class InterruptAfter(checkpoint.StopSignal):
    """Sends the process a real SIGINT when the training loop checks the flag for the n-th time."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.checks = checks

    @property
    def requested(self) -> bool:
        self.checks -= 1
        if self.checks == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return super().requested
