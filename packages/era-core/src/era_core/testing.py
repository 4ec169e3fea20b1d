"""Test helpers shared by the ERA packages (for tests; the helpers need pytest when called)."""

import contextlib
import errno
import hashlib
import io
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Generator, Iterable
from importlib import metadata
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, cast

import torch
from torch.torch_version import TorchVersion

from era_core.cli import LOCK_FILE

if TYPE_CHECKING:
    import pytest

__all__ = [
    "apply_gpu_policy",
    "cpu_and_cuda",
    "duplicate_distributions",
    "failing_torch_save",
    "folder_digest",
    "held_run_dir",
    "help_text",
    "requires_torch",
    "run_digest",
]


def help_text(main: Callable[[list[str]], object], argv: list[str]) -> str:
    """What a CLI's ``main([*argv, "--help"])`` prints; fails unless it exits with code 0."""
    import pytest

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0, f"{argv} --help exited with {exit_info.value.code}"
    return out.getvalue()


def failing_torch_save(
    from_step: int, how: Literal["disk-full", "kill"]
) -> Callable[[Any, IO[bytes]], None]:
    """A ``torch.save`` whose checkpoints of step ``from_step`` or later are cut off halfway.

    Saving a dict whose ``"step"`` is at least ``from_step`` into an open file writes part of a
    file, then fails as torch does on a full disk (a RuntimeError whose cause is the ``OSError``
    ENOSPC) or SIGKILLs the process; earlier saves are real. For a trainer's fault tests:
    patch ``torch.save`` with it in the test process, or in a child process for a kill.
    """
    real_save = torch.save

    def save(obj: Any, file: IO[bytes]) -> None:
        saved: object = obj  # narrowed apart from ``obj``, which goes on to torch as given
        state = cast("dict[str, Any]", saved) if isinstance(saved, dict) else {}
        if state.get("step", 0) >= from_step:
            file.write(b"half a checkpoint")
            file.flush()
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise RuntimeError("unexpected pos (torch.save on a full disk)") from full
        real_save(obj, file)

    return save


def cpu_and_cuda() -> tuple[Any, ...]:
    """Device parameters: ``"cpu"`` and ``"cuda"`` marked ``gpu`` (torchvision's ``cpu_and_cuda``)."""
    import pytest  # here, so that importing this module needs no pytest

    return ("cpu", pytest.param("cuda", marks=pytest.mark.gpu))


def requires_torch(minimum: str, reason: str) -> "pytest.MarkDecorator":
    """Skip a test on a torch older than ``minimum``: a feature the declared torch floor lacks.

    The installed-wheel tests run every package at its dependencies' floors too, so a test of
    such a feature says which torch it needs instead of failing there.
    """
    import pytest

    older = TorchVersion(torch.__version__) < minimum
    return pytest.mark.skipif(older, reason=f"needs torch >= {minimum}: {reason}")


def apply_gpu_policy(items: "list[pytest.Item]") -> None:
    """Skip ``gpu``-marked tests without CUDA; with ``ERA_REQUIRE_GPU=1``, fail the run instead.

    Call it from a package's ``pytest_collection_modifyitems`` hook, so a misconfigured
    GPU runner cannot pass by skipping everything.
    """
    import pytest

    if torch.cuda.is_available():
        return
    if os.environ.get("ERA_REQUIRE_GPU") == "1":
        raise pytest.UsageError("ERA_REQUIRE_GPU=1 but CUDA is not available")
    skip = pytest.mark.skip(reason="CUDA is not available")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def duplicate_distributions(
    distributions: Iterable[metadata.Distribution] | None = None,
) -> dict[str, list[str]]:
    """Distributions installed more than once, as ``{name: [versions]}`` (default: this environment).

    An installer that merges two incompatible lock forks leaves two ``dist-info`` folders of, say,
    torch in one environment; the files on disk are then a mix of both, and tests that pass there
    prove nothing. Call it from ``pytest_configure`` to refuse such an environment.
    """
    versions: dict[str, list[str]] = {}
    for dist in metadata.distributions() if distributions is None else distributions:
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        versions.setdefault(name, []).append(dist.version)
    return {name: sorted(v) for name, v in sorted(versions.items()) if len(v) > 1}


def folder_digest(folder: str | os.PathLike[str]) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path: compare it before and after."""
    root = Path(folder)
    return {
        str(file.relative_to(root)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(root.rglob("*"))
        if file.is_file()
    }


def run_digest(folder: str | os.PathLike[str]) -> dict[str, str]:
    """:func:`folder_digest` of a run folder without its lock file, which names the last owner's pid."""
    return {path: digest for path, digest in folder_digest(folder).items() if path != LOCK_FILE}


@contextlib.contextmanager
def held_run_dir(folder: str | os.PathLike[str]) -> Generator[int]:
    """Another process holds ``folder`` (:func:`era_core.cli.hold_run_dir`) while the block runs.

    Yields:
        That process's pid. It is SIGKILLed when the block ends, as a crashed run would be.
    """
    code = (
        "import sys; from era_core.cli import hold_run_dir\n"
        "with hold_run_dir(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, os.fspath(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            if holder.stdout.readline() != "held\n":
                raise RuntimeError(f"the process meant to hold {os.fspath(folder)!r} failed")
            yield holder.pid
        finally:
            holder.kill()
