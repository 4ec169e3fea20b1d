"""Typed configs: one dataclass per entrypoint, turned into CLI flags, YAML files and presets.

Precedence, lowest first: dataclass defaults, ``--preset NAME``, ``--config file.yaml``, flags.
Every field carries a one-line help in ``field(metadata={"help": ...})``; ``bool`` fields get
``--x/--no-x``, ``Literal`` fields get choices, ``X | None`` accepts ``none``, ``tuple[int, ...]``
takes several values.
"""

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import torch
import yaml

from era_control.envs import resolve_env_id
from era_core.cli import read_parsed, write_atomically
from era_core.validation import check_range

__all__ = [
    "RunConfig",
    "add_arguments",
    "from_dict",
    "help_field",
    "load_yaml",
    "resolve",
    "save_yaml",
    "to_dict",
]

C = TypeVar("C")


def help_field(default: Any, help: str) -> Any:
    """A dataclass field with a default and a one-line help (shown by ``--help``)."""
    if isinstance(default, list | dict):
        raise TypeError("use a tuple for sequence defaults; dataclass fields must be immutable")
    return dataclasses.field(default=default, metadata={"help": help})


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional_inner(tp: Any) -> Any | None:
    """``X`` for ``X | None``, else ``None``."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Check and convert one value (from YAML or a flag string) to the field's type."""
    inner = _optional_inner(tp)
    if inner is not None:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(name, value, inner)
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
        return value
    if origin is tuple:
        (elem, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str | int | float):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name} must be a list, got {value!r}")
        return tuple(_coerce(name, v, elem) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if tp in (int, float):
        try:
            if isinstance(value, bool):
                raise TypeError
            number = float(value)  # also reads YAML's "3e-4" (a string in YAML 1.1) and "1e6"
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be {tp.__name__}, got {value!r}") from None
        if tp is float:
            return number
        if not number.is_integer():
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(number)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {tp!r} for {name}")


def add_arguments(
    parser: argparse.ArgumentParser, cls: type, presets: Mapping[str, Mapping[str, Any]]
) -> None:
    """Add ``--config``, ``--preset`` and one flag per field of dataclass ``cls`` to ``parser``.

    Flags default to ``argparse.SUPPRESS`` so that :func:`resolve` can tell given flags from
    defaults and apply the precedence order.
    """
    parser.add_argument("--config", type=Path, help="YAML file of field values (flags override it)")
    if presets:
        parser.add_argument(
            "--preset",
            choices=sorted(presets),
            help="named set of defaults, e.g. the authors' settings",
        )
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp, flag = types_[f.name], "--" + f.name.replace("_", "-")
        help_ = f"{f.metadata.get('help', '')} (default: {f.default!r})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_}
        inner = _optional_inner(tp) or tp
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if typing.get_origin(inner) is Literal:
            kwargs["choices"] = list(typing.get_args(inner))
        elif typing.get_origin(inner) is tuple:
            kwargs["nargs"] = "+"
        kwargs["type"] = _flag_converter(f.name, tp)
        kwargs["metavar"] = f.name.upper() if "choices" not in kwargs else None
        parser.add_argument(flag, **kwargs)


def _flag_converter(name: str, tp: Any) -> Any:
    inner = _optional_inner(tp)
    elem = typing.get_args(inner or tp)[0] if typing.get_origin(inner or tp) is tuple else None

    def convert(text: str) -> Any:
        try:
            return _coerce(name, text, elem if elem is not None else tp)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = getattr(tp, "__name__", str(tp))
    return convert


def from_dict(cls: type[C], values: Mapping[str, Any], source: str = "config") -> C:
    """Build ``cls`` from a mapping, refusing unknown keys and ill-typed values."""
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ValueError(f"unknown {source} keys {unknown}; allowed: {sorted(types_)}")
    return cls(**{k: _coerce(k, v, types_[k]) for k, v in values.items()})


def resolve(
    cls: type[C], args: argparse.Namespace, presets: Mapping[str, Mapping[str, Any]] | None = None
) -> C:
    """Merge preset, YAML file and given flags (in that order) into a validated ``cls``."""
    values: dict[str, Any] = {}
    preset = getattr(args, "preset", None)
    if preset is not None:
        values.update((presets or {})[preset])
    if getattr(args, "config", None) is not None:
        loaded = read_yaml(args.config) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {args.config}: expected a mapping of field names to values")
        values.update(loaded)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values.update({k: v for k, v in vars(args).items() if k in names})
    return from_dict(cls, values)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain dict of a config dataclass; tuples become lists (YAML-friendly)."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }


def save_yaml(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (kept next to the run's checkpoints), atomically."""
    text = yaml.safe_dump(to_dict(config), sort_keys=False).encode()
    write_atomically(path, lambda file: file.write(text))


def load_yaml(cls: type[C], path: str | Path) -> C:
    """Read a config saved by :func:`save_yaml`."""
    return from_dict(cls, read_yaml(path) or {}, source=str(path))


def read_yaml(path: str | Path) -> Any:
    """The YAML document in ``path``; a file that is not YAML is a UsageError naming it."""
    return read_parsed(path, yaml.safe_load, (yaml.YAMLError,), "YAML")


@dataclasses.dataclass
class RunConfig:
    """Fields every training entrypoint shares (env, budget, seeds, logging, checkpoints)."""

    env: str = help_field(
        "Hopper-v5", "gymnasium id; dm_control/<domain>-<task>-v0 with the dmc extra"
    )
    steps: int = help_field(1_000_000, "environment steps per seed")
    seeds: int = help_field(1, "independent seeds trained together as one batched ensemble")
    seed: int = help_field(0, "first seed; the ensemble uses seed, seed+1, ..., seed+seeds-1")
    eval_every: int = help_field(5_000, "env steps between deterministic evaluations")
    eval_episodes: int = help_field(5, "episodes per seed in each evaluation")
    log_every: int = help_field(1_000, "env steps between training-metric log rows")
    checkpoint_every: int = help_field(
        50_000, "env steps between checkpoints (also written on SIGINT/SIGTERM)"
    )
    out: str = help_field("runs", "directory that holds run directories")
    run_name: str | None = help_field(
        None, "run directory name (default: env__algo__seeds__timestamp)"
    )
    device: str = help_field(
        "auto", "torch device: auto (cuda if available), cpu, cuda, cuda:1, ..."
    )
    threads: int | None = help_field(
        1,
        "torch intra-op CPU threads; 1 is fastest for small MLPs on busy CPUs (none: torch's choice)",
    )
    tensorboard: bool = help_field(True, "also write TensorBoard event files")

    def __post_init__(self) -> None:
        """Validate the shared fields (each error names the flag and its allowed range)."""
        check_range("steps", self.steps, 1)
        check_range("seeds", self.seeds, 1)
        check_range("seed", self.seed, 0)
        check_range("eval_every", self.eval_every, 1)
        check_range("eval_episodes", self.eval_episodes, 1)
        check_range("log_every", self.log_every, 1)
        check_range("checkpoint_every", self.checkpoint_every, 1)
        if self.threads is not None:
            check_range("threads", self.threads, 1)
        torch.device("cpu" if self.device == "auto" else self.device)  # raises on a malformed name
        resolve_env_id(self.env)

    def approximate_resume(self) -> str | None:
        """Why a resume of this run cannot continue exactly, or ``None`` (recorded in run.yaml)."""
        return None

    def seed_list(self) -> list[int]:
        """The ensemble's seeds, in member order."""
        return list(range(self.seed, self.seed + self.seeds))

    def torch_device(self) -> torch.device:
        """The resolved device (``auto``: CUDA when available)."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)
