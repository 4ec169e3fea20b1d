"""Command-line flags generated from config dataclasses: ``--config file.yaml`` then overrides.

Each field becomes ``--field-name`` with its ``metadata["help"]``; ``Literal`` fields get
choices, ``bool`` fields ``--flag/--no-flag``, and fields with ``metadata["positional"]``
become positional arguments.
"""

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from era_core.cli import UsageError

__all__ = ["add_arguments", "config_from_args", "load_config", "save_config", "user_input"]

C = TypeVar("C")


def _base_type(annotation: Any) -> Any:
    """Strip ``X | None`` to ``X``: such fields take an X on the command line, None is a default."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one argument per dataclass field, plus ``--config``, to ``parser``.

    Defaults are suppressed so that only flags given on the command line override the YAML.
    """
    parser.add_argument(
        "--config", type=Path, help="YAML file with field values; flags override it"
    )
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = _base_type(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = f"{field.metadata.get('help', '')} (default: {default})"
        kwargs: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS}
        if typing.get_origin(kind) is Literal:
            kwargs["choices"] = typing.get_args(kind)
            kwargs["type"] = type(typing.get_args(kind)[0])
        elif kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) in (list, tuple):
            kwargs["nargs"] = "+" if field.metadata.get("positional") else "*"
            kwargs["type"] = typing.get_args(kind)[0]
        else:
            kwargs["type"] = kind
        if field.metadata.get("positional"):
            parser.add_argument(field.name, **kwargs)
        else:
            kwargs["dest"] = field.name
            parser.add_argument("--" + field.name.replace("_", "-"), **kwargs)


@contextmanager
def user_input(where: str) -> Iterator[None]:
    """Report a ``ValueError`` or ``ImportError`` raised inside as a ``UsageError`` at ``where``.

    For calls whose failures come from what the user asked for (a dataset, a model name, a
    device); everything else keeps its traceback.
    """
    try:
        yield
    except (ValueError, ImportError) as error:
        raise UsageError(f"{error} ({where})") from error


def _type_matches(value: Any, kind: Any) -> bool:
    if typing.get_origin(kind) is Literal:
        return value in typing.get_args(kind)
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return any(_type_matches(value, k) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if typing.get_origin(kind) in (list, tuple):
        return isinstance(value, list | tuple) and all(
            _type_matches(v, typing.get_args(kind)[0]) for v in value
        )
    if kind is float:  # YAML writes 1 for 1.0
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_field_types(cls: type, values: dict[str, Any], source: object) -> None:
    """Refuse values (from a YAML file) whose type is not the field's, naming the field."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if not _type_matches(value, hints[name]):
            kind = getattr(hints[name], "__name__", str(hints[name]))
            raise UsageError(f"field {name!r} must be {kind}, got {value!r} ({source})")


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    """Build ``cls`` from defaults, then ``--config`` YAML, then command-line flags.

    Raises:
        UsageError: If the YAML is unreadable, names unknown fields or has a value of the wrong
            type, or if the config refuses a value (its ``ValueError``).
    """
    values = vars(args).copy()
    path = values.pop("config", None)
    merged = load_yaml(path) if path is not None else {}
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(merged) - names
    if unknown:
        raise UsageError(f"unknown fields {sorted(unknown)} (--config {path})")
    check_field_types(cls, merged, f"--config {path}")
    merged.update({k: v for k, v in values.items() if k in names})
    with user_input("command line" if path is None else f"command line, --config {path}"):
        return cls(**merged)


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping (an empty file gives ``{}``)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise UsageError(f"cannot read YAML: {error} ({path})") from error
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a mapping of field names to values")
    return data


def save_config(config: Any, path: Path) -> None:
    """Write a config dataclass as YAML (the resolved config of a run)."""
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))


def load_config(cls: type[C], path: Path) -> C:
    """Read a config dataclass written by ``save_config``.

    Raises:
        UsageError: A field the dataclass does not have, or a value its checks refuse.
    """
    values = load_yaml(path)
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise UsageError(f"unknown field(s) {', '.join(unknown)} ({path})")
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise UsageError(f"{error} ({path})") from error
