"""One error convention for every ERA command line.

A failure the user can fix (a bad flag, a missing or corrupt file, an unwritable folder, a
device that is not there) is raised as :class:`UsageError` and reported as one line,
``error: <what> (<where>)``, with exit code 2 and no traceback. ``--debug`` or ``ERA_DEBUG=1``
shows the traceback; any other exception is a bug in our code and keeps its traceback.

A trainer owns its run folder for as long as it runs (:func:`hold_run_dir`), so a second
process launched on the same folder fails with such a line instead of mixing its files in.
A run that starts over in a folder holding an old run (an overwrite, a reused name) sets the
old run's files aside rather than deleting them (:func:`replacing_run`): they come back if
the new run fails before its first checkpoint, even if it was killed outright.
"""

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Collection, Generator
from pathlib import Path

__all__ = [
    "DEBUG_ENV",
    "LOCK_FILE",
    "SET_ASIDE_DIR",
    "UsageError",
    "debug_requested",
    "hold_run_dir",
    "replacing_run",
    "report_usage_errors",
]

DEBUG_ENV = "ERA_DEBUG"
"""Environment variable that, set to anything but ``""`` or ``"0"``, shows tracebacks."""

LOCK_FILE = ".lock"
"""The file in a run folder that :func:`hold_run_dir` locks; it holds the owner's pid."""

SET_ASIDE_DIR = ".replaced"
"""The folder in a run folder where :func:`replacing_run` keeps the old run's files."""


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

    A replacement (:func:`replacing_run`) left unfinished by a killed process is undone
    first: the old run's files come back, and a line on stderr says so.

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
        if _restore_set_aside(folder):
            print(
                f"warning: {str(folder)!r}: a run that replaced the one here ended before its "
                "first checkpoint; the earlier run's files are back",
                file=sys.stderr,
            )
        yield folder
    finally:
        # Explicit, so that worker processes forked meanwhile (sharing this open file) do
        # not keep holding it; a no-op when another process holds the lock.
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def replacing_run(
    path: str | os.PathLike[str], names: Collection[str]
) -> Generator[Callable[[], None]]:
    """Start a new run over an old one in a folder this process holds (:func:`hold_run_dir`).

    Moves each of ``names`` that exists in ``path`` (the old run's files and folders) into
    ``<path>/.replaced/``. Call the yielded function once the new run has written its first
    checkpoint: that deletes the old files. Until then they are kept, and if the block ends
    by an exception (a bad model path found late, a crash, a signal) the new run's entries of
    those names are deleted and the old ones moved back. A block that ends normally without
    the call (the new run finished without a checkpoint) keeps the new run. A process killed
    outright leaves ``.replaced`` behind, and the next :func:`hold_run_dir` restores it.

    Call it just before the new run writes its first file, after every check of the new
    settings: until then nothing of the old run has moved.

    Args:
        path: The run folder.
        names: The entries of ``path`` that make up a run; anything else in the folder (a
            log the user redirected there) is left alone.

    Yields:
        ``done()``: the new run is safe on disk; the old one may go (idempotent).
    """
    folder = Path(path)
    aside = folder / SET_ASIDE_DIR
    names = sorted(set(names) - {LOCK_FILE, SET_ASIDE_DIR})
    moved = [name for name in names if _exists(folder / name)]
    if moved:
        (aside / "files").mkdir(parents=True)  # a leftover was restored when the folder was taken
        try:
            for name in moved:
                (folder / name).rename(aside / "files" / name)
            # Written once all moved (temp file + rename): from then on, the folder's entries
            # of these names are the new run's; before it, a restore only moves files back.
            (aside / "names.tmp").write_text(json.dumps(names))
            (aside / "names.tmp").rename(aside / "names.json")
        except BaseException:
            _restore_set_aside(folder)
            raise
    kept = bool(moved)

    def done() -> None:
        nonlocal kept
        if kept:
            kept = False
            shutil.rmtree(aside)

    try:
        yield done
    except BaseException:
        if kept:
            _restore_set_aside(folder)
        raise
    done()


def _restore_set_aside(folder: Path) -> bool:
    """Put an unfinished replacement's old files back; whether there was one.

    The new run's entries of the names the replacement recorded are deleted first (none
    exist when it was killed while still moving the old files aside).
    """
    aside = folder / SET_ASIDE_DIR
    if not aside.is_dir():
        return False
    names_file, files = aside / "names.json", aside / "files"
    names: list[str] = json.loads(names_file.read_text()) if names_file.is_file() else []
    for entry in (folder / name for name in names):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif _exists(entry):
            entry.unlink()
    for entry in files.iterdir() if files.is_dir() else ():
        entry.rename(folder / entry.name)
    shutil.rmtree(aside)
    return True


def _exists(path: Path) -> bool:
    """Whether ``path`` exists, a dangling symlink included."""
    return path.exists() or path.is_symlink()
