"""Checkpoints that survive crashes and signals.

- :func:`save` writes through :func:`era_core.cli.write_atomically` (as does every file a
  resume reads): a temporary file in the same directory, fsynced and renamed over the old
  file, so a checkpoint is never half written and a full disk leaves the previous one whole.
- :class:`StopSignal` turns the first SIGINT/SIGTERM into a flag the training loop checks
  between steps: the loop then saves and exits cleanly. A second signal stops at once.
"""

import signal
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import torch
import yaml

from era_control.config import read_yaml
from era_core.cli import UsageError, write_atomically

__all__ = ["StopSignal", "load", "note_resume", "save"]

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (anything ``torch.save`` can store) to ``path``."""
    write_atomically(path, lambda file: torch.save(state, file))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save`.

    Checkpoints hold pickled environments, so they are loaded with ``weights_only=False``:
    only load checkpoints you produced or trust.

    Raises:
        UsageError: The file is missing, unreadable or not a checkpoint (naming the file).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise UsageError(f"checkpoint {str(path)!r} does not exist") from None
    except Exception as error:
        raise UsageError(
            f"checkpoint {str(path)!r} is unreadable (truncated, empty or not a checkpoint: "
            f"{type(error).__name__})"
        ) from error
    if not isinstance(state, dict) or "step" not in state:
        raise UsageError(f"checkpoint {str(path)!r} is not an era-control checkpoint")
    return state


def note_resume(run_dir: str | Path, step: int, **notes: str) -> None:
    """Append what a resume at ``step`` could not restore to ``run_dir/run.yaml`` (``resumes``).

    ``notes`` name the part, e.g. ``env_state="..."`` or ``replay_buffer="..."``.
    """
    path = Path(run_dir) / "run.yaml"
    info = (read_yaml(path) if path.exists() else None) or {}
    info.setdefault("resumes", []).append({"step": int(step), **notes})
    path.write_text(yaml.safe_dump(info, sort_keys=False))


class StopSignal:
    """Context manager: SIGINT/SIGTERM set :attr:`signum` instead of killing the process."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop signal arrived."""
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """The shell convention ``128 + signal`` for the received signal, 0 if none."""
        return (
            0
            if self.signum is None
            else EXIT_CODES.get(signal.Signals(self.signum), 128 + self.signum)
        )

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # second signal: the user insists
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopSignal":
        for sig in EXIT_CODES:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
