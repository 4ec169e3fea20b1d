"""One error convention for every ERA command line.

A failure the user can fix (a bad flag, a missing or corrupt file, an unwritable folder, a
device that is not there) is raised as :class:`UsageError` and reported as one line,
``error: <what> (<where>)``, with exit code 2 and no traceback. ``--debug`` or ``ERA_DEBUG=1``
shows the traceback; any other exception is a bug in our code and keeps its traceback.
"""

import os
import sys
from collections.abc import Callable

__all__ = ["DEBUG_ENV", "UsageError", "debug_requested", "report_usage_errors"]

DEBUG_ENV = "ERA_DEBUG"
"""Environment variable that, set to anything but ``""`` or ``"0"``, shows tracebacks."""


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
