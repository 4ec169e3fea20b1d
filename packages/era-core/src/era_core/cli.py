"""One error convention for every ERA command line.

A failure the user can fix (a bad flag, a missing or corrupt file, an unwritable folder, a
device that is not there) is raised as :class:`UsageError` and reported as one line,
``error: <what> (<where>)``, with exit code 2 and no traceback. ``--debug`` or ``ERA_DEBUG=1``
shows the traceback; any other exception is a bug in our code and keeps its traceback.

A trainer owns its run folder for as long as it runs (:func:`hold_run_dir`), so a second
process launched on the same folder fails with such a line instead of mixing its files in.
"""

import contextlib
import os
import sys
from collections.abc import Callable, Generator
from pathlib import Path

__all__ = [
    "DEBUG_ENV",
    "LOCK_FILE",
    "UsageError",
    "debug_requested",
    "hold_run_dir",
    "report_usage_errors",
]

DEBUG_ENV = "ERA_DEBUG"
"""Environment variable that, set to anything but ``""`` or ``"0"``, shows tracebacks."""

LOCK_FILE = ".lock"
"""The file in a run folder that :func:`hold_run_dir` locks; it holds the owner's pid."""


class UsageError(Exception):
    """A failure the user can fix; its message is the whole report, so make it name the input."""


def debug_requested(argv: list[str]) -> bool:
    """Whether ``argv`` holds ``--debug`` or the environment sets :data:`DEBUG_ENV`."""
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def report_usage_errors(run: Callable[[], int], *, debug: bool = False) -> int:
    """Call ``run`` and return its exit code; a :class:`UsageError` becomes one line and code 2.

    Args:
        run: The command's body.
        debug: Re-raise the :class:`UsageError` (with its traceback) instead of reporting it.
    """
    try:
        return run()
    except UsageError as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def hold_run_dir(path: str | os.PathLike[str]) -> Generator[Path]:
    """Own the run folder ``path`` until the block ends: one process per run folder.

    Takes an exclusive advisory lock (``flock``) on ``<path>/.lock`` (creating the folder if
    needed) and writes this process's pid into that file. The kernel drops the lock when the
    process ends, however it ends, so the folder of a killed run is simply taken over. Unix
    only: ``fcntl`` is what provides the lock.

    Args:
        path: The run folder.

    Yields:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        UsageError: Another process holds the folder (the message names its pid; no file of
            the run is changed), or the folder or its lock file cannot be created.
    """
    try:
        import fcntl
    except ImportError as error:  # Windows
        raise UsageError(
            "run folders are locked with fcntl, which this platform lacks (Linux and macOS have it)"
        ) from error
    folder = Path(path)
    lock_path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise UsageError(
            f"cannot write to the run folder {str(folder)!r} ({error.strerror or error})"
        ) from error
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # Empty for the instant between the holder's flock and its write.
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            raise UsageError(
                f"run folder {str(folder)!r} is in use by process {holder} (one process per "
                "run folder: wait for it to end, or use another folder)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield folder
    finally:
        # Explicit, so that worker processes forked meanwhile (sharing this open file) do
        # not keep holding it; a no-op when another process holds the lock.
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
