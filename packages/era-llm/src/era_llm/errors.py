"""era-llm's ``UsageError``: a failure the user can fix, reported by the CLI as one line."""

from era_core import cli

__all__ = ["UsageError"]


class UsageError(cli.UsageError, ValueError):
    """A bad flag, file, folder or device: ``era-llm`` prints ``error: <message>`` and exits 2.

    Also a ``ValueError``, which the library raised for these before.
    """
