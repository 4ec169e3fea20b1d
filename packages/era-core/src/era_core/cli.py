"""One error convention for every ERA command line.

A failure the user can fix (a bad flag, a missing or corrupt file, an unwritable folder, a
device that is not there) is raised as :class:`UsageError` and reported as one line,
``error: <what> (<where>)``, with exit code 2 and no traceback. What the system refuses about
a path (missing, in the way, not permitted, a full or read-only disk) is reported the same way, wherever
it is raised. ``--debug`` or ``ERA_DEBUG=1`` shows the traceback; any other exception is a bug
in our code and keeps its traceback, with a note asking for a report.

Files a resume reads are written by :func:`write_atomically`: a full disk or a kill during the
write leaves the previous file as it was.

A trainer owns its run folder for as long as it runs (:func:`hold_run_dir`), so a second
process launched on the same folder fails with such a line instead of mixing its files in.
A run that starts over in a folder holding an old run (an overwrite, a reused name) sets the
old run's files aside rather than deleting them (:func:`replacing_run`): they come back if
the new run fails before its first checkpoint, even if it was killed outright.
"""

import argparse
import contextlib
import errno
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Collection, Generator
from pathlib import Path
from typing import BinaryIO, NoReturn, TypeVar

__all__ = [
    "DEBUG_ENV",
    "LOCK_FILE",
    "REPORT_BUGS_AT",
    "SET_ASIDE_DIR",
    "ArgumentParser",
    "UsageError",
    "debug_requested",
    "hold_run_dir",
    "read_parsed",
    "replacing_run",
    "report_usage_errors",
    "user_error_message",
    "write_atomically",
    "writing_to",
]

DEBUG_ENV = "ERA_DEBUG"
"""Environment variable that, set to anything but ``""`` or ``"0"``, shows tracebacks."""

LOCK_FILE = ".lock"
"""The file in a run folder that :func:`hold_run_dir` locks; it holds the owner's pid."""

SET_ASIDE_DIR = ".replaced"
"""The folder in a run folder where :func:`replacing_run` keeps the old run's files."""

REPORT_BUGS_AT = "https://github.com/era-project/era/issues"
"""Where the note on an unexpected exception asks for a bug report."""

# What the system says of a path: the user named it, or chose the disk it lies on.
_PATH_ERRNOS = {
    errno.ENOENT,
    errno.EEXIST,
    errno.EACCES,
    errno.EPERM,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EROFS,
    errno.ENAMETOOLONG,
    errno.ENOSPC,
    errno.EDQUOT,
}
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


T = TypeVar("T")


class UsageError(Exception):
    """A failure the user can fix; its message is the whole report, so make it name the input."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, reporting a bad command line in the convention's one line.

    argparse prints the whole usage text before its message; this prints only
    ``error: <message> (<prog> --help lists the flags)`` and exits with code 2. Subcommand
    parsers made by ``add_subparsers`` are of this class too.
    """

    def error(self, message: str) -> NoReturn:
        """Print the one-line report of a bad command line and exit with code 2."""
        self.exit(2, f"error: {message} ({self.prog} --help lists the flags)\n")


def read_parsed(
    path: str | os.PathLike[str],
    parse: Callable[[str], T],
    errors: tuple[type[Exception], ...],
    kind: str,
) -> T:
    """``parse`` of the text of the file ``path``; a file that does not parse is a UsageError.

    A missing or unreadable file is an ``OSError`` naming ``path`` (one line through
    :func:`report_usage_errors`); bytes that are not UTF-8, or a ``parse`` that raises one of
    ``errors`` (``yaml.YAMLError``, ``json.JSONDecodeError``), are a :class:`UsageError` naming
    ``path``, ``kind`` and where the parser stopped.

    Args:
        path: The file the user named (or a file of a run folder they named).
        parse: Text to value, e.g. ``yaml.safe_load``.
        errors: What ``parse`` raises for bad text.
        kind: The format's name for the message ("YAML").
    """
    try:
        return parse(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, *errors) as error:
        raise UsageError(f"{os.fspath(path)!r} is not valid {kind}: {error}") from error


def debug_requested(argv: list[str]) -> bool:
    """Whether ``argv`` holds ``--debug`` or the environment sets :data:`DEBUG_ENV`."""
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def report_usage_errors(
    run: Callable[[], int], *, debug: bool = False, program: str = "ERA"
) -> int:
    """Call ``run`` and return its exit code; a failure the user can fix is one line and code 2.

    That is a :class:`UsageError`, or any exception caused by an ``OSError`` about a path (a
    missing file, no permission, a full or read-only disk), however deep it was raised.
    Anything else propagates with its traceback and a note asking for a bug report.

    Args:
        run: The command's body.
        debug: Re-raise the user's errors too, with their tracebacks.
        program: The command's name, for the bug-report note.
    """
    try:
        return run()
    except Exception as error:
        message = user_error_message(error)
        if message is None:
            error.add_note(
                f"This is a bug in {program}: please report it, with the traceback above, at "
                f"{REPORT_BUGS_AT} (rerun with --debug for tracebacks of usage errors too)."
            )
            raise
        if debug:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


def user_error_message(error: BaseException) -> str | None:
    """The one-line report of ``error`` if the user can fix it (see :func:`report_usage_errors`)."""
    if isinstance(error, UsageError):
        return " ".join(str(error).split())
    refused = _os_error_in(error)
    return None if refused is None else _describe_os_error(refused)


def _describe_os_error(error: OSError) -> str:
    what = error.strerror or os.strerror(error.errno or 0)
    where = f": {error.filename!s}" if error.filename is not None else ""
    message = f"{what}{where}"
    if error.errno in _DISK_FULL_ERRNOS and error.filename is not None:
        message += f" ({_free_space(Path(error.filename).parent)})"
    return message


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free there"
    except OSError:
        return "free space unknown"


def write_atomically(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temporary file beside ``path``, fsync it and rename it over ``path``.

    Until the rename the previous ``path`` is untouched, so a failed write (a full disk) or a
    kill leaves it whole; the temporary file is removed on failure (a killed process leaves
    ``.<name>.*.tmp`` behind, which no reader opens). A refused write names ``path``
    (:func:`writing_to`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with writing_to(path), os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def writing_to(path: str | os.PathLike[str]) -> Generator[None]:
    """Make a write refused in the block (no space, no permission) an ``OSError`` naming ``path``.

    Writers report a full disk without the file (``file.write`` into an open file) or bury it
    (``torch.save`` raises a RuntimeError whose context is the ``OSError``); re-raised with
    ``path`` as its ``filename``, :func:`report_usage_errors` makes it one line naming the
    path and the free space there. Write with ``torch.save`` into an open file: given a path,
    it drops the error number and the disk is not recognised as full.
    """
    try:
        yield
    except Exception as error:
        refused = _os_error_in(error)
        if refused is None or refused.filename is not None:
            raise
        raise OSError(refused.errno, refused.strerror, os.fspath(path)) from error


def _os_error_in(error: BaseException) -> OSError | None:
    """The first ``OSError`` about a path among ``error``, its causes and contexts."""
    cause: BaseException | None = error
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError) and cause.errno in _PATH_ERRNOS:
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


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
