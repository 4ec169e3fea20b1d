"""Typed configs to CLI flags and YAML: ``--config file.yaml`` first, then flag overrides.

Every entrypoint has one ``@dataclass``; each field carries its help text in
``field(metadata={"help": ...})``. Flags are generated from the fields (``lr`` becomes
``--lr``, ``max_new_tokens`` becomes ``--max-new-tokens``), ``Literal`` fields become choices
and ``bool`` fields get ``--x/--no-x``.
"""

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml

from era_core.cli import ArgumentParser

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["build_parser", "help_field", "parse_config", "save_config"]

C = TypeVar("C", bound="DataclassInstance")


def help_field(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with a one-line help text (``default`` may be omitted for required fields)."""
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _scalar_parser(tp: Any, optional: bool) -> Any:
    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        return tp(text)

    parse.__name__ = getattr(tp, "__name__", "value")
    return parse


def _add_argument(parser: argparse.ArgumentParser, field: dataclasses.Field, tp: Any) -> None:
    help_text = field.metadata.get("help", "")
    if field.default is not dataclasses.MISSING:
        help_text += f" (default: {field.default!r})"
    elif field.default_factory is not dataclasses.MISSING:
        help_text += f" (default: {field.default_factory()!r})"
    else:
        help_text += " (required)"
    tp, optional = _unwrap_optional(tp)
    kwargs: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS, "dest": field.name}
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(tp) is Literal:
        kwargs["choices"] = list(typing.get_args(tp))
    elif typing.get_origin(tp) in (list, tuple):
        # Several values after one flag, or the flag repeated: both add to the list.
        (item,) = set(typing.get_args(tp)) - {Ellipsis}
        kwargs.update(nargs="+", action="extend", type=_scalar_parser(item, False))
    else:
        kwargs["type"] = _scalar_parser(tp, optional)
    parser.add_argument(_flag(field.name), **kwargs)


def build_parser(cls: type, prog: str | None = None) -> ArgumentParser:
    """The command line of dataclass ``cls``: ``--config``, ``--debug`` and one flag per field."""
    # The docstring is reStructuredText; --help shows its ``code`` as `code`.
    description = (cls.__doc__ or "").split("\n")[0].replace("``", "`")
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, help="YAML file of field values; flags override it")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (or ERA_DEBUG=1)"
    )
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.init:
            _add_argument(parser, field, hints[field.name])
    return parser


def _yaml_value(path: Path, name: str, value: Any, hint: Any) -> Any:
    """A ``--config`` value checked against its field's type, as a flag would be.

    Numbers may come as text (YAML reads ``1e-6`` as a string); an int field refuses ``1.5``
    rather than truncating it; a choice must be one of the allowed values.
    """
    tp, optional = _unwrap_optional(hint)
    if value is None and optional:
        return None
    if typing.get_origin(tp) is Literal:
        choices = list(typing.get_args(tp))
        if value in choices:
            return value
        raise ValueError(f"--config {path}: {name} must be one of {choices}, got {value!r}")
    if tp in (int, float) and not isinstance(value, bool):
        convert: Any = tp  # int or float, applied to whatever YAML held
        try:
            number = convert(value)
        except (TypeError, ValueError):
            number = None
        if number is not None and (isinstance(value, str) or number == value):
            return number
        raise ValueError(f"--config {path}: {name} must be {tp.__name__}, got {value!r}")
    if tp is bool and not isinstance(value, bool):
        raise ValueError(f"--config {path}: {name} must be true or false, got {value!r}")
    if typing.get_origin(tp) is list:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"--config {path}: {name} must be a string or a list of strings, got {value!r}")  # fmt: skip
        return values
    return value


def parse_config(cls: type[C], argv: list[str] | None, prog: str | None = None) -> C:
    """Build ``cls`` from an optional ``--config file.yaml`` plus command-line overrides.

    Args:
        cls: A dataclass type whose fields carry ``metadata["help"]``.
        argv: Arguments (without the program / subcommand name); ``None`` reads ``sys.argv``.
        prog: Program name shown in ``--help``.

    Returns:
        The config instance (its ``__post_init__`` has validated it).

    Raises:
        ValueError: The YAML file names a field ``cls`` does not have, or a required field is
            missing from both the file and the flags.
    """
    parser = build_parser(cls, prog)
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    args = vars(parser.parse_args(argv))
    config_path = args.pop("config", None)
    args.pop("debug")
    values: dict[str, Any] = {}
    if config_path is not None:
        try:
            loaded = yaml.safe_load(config_path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"--config {config_path}: cannot read it ({error})") from error
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {config_path}: expected a mapping of field names to values")
        unknown = sorted(set(loaded) - {f.name for f in fields})
        if unknown:
            raise ValueError(f"--config {config_path}: unknown fields {unknown}")
        values.update({k: _yaml_value(config_path, k, v, hints[k]) for k, v in loaded.items()})
    values.update(args)
    missing = [
        _flag(f.name)
        for f in fields
        if f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(
            f"missing required option(s) {', '.join(missing)} (give them as flags or in --config)"
        )
    return cls(**values)


def save_config(config: Any, path: Path) -> None:
    """Write the resolved config as YAML (the file ``--config`` accepts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
