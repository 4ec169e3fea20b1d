import argparse
import dataclasses
from typing import Literal

import pytest

from era_control import config


@dataclasses.dataclass
class Toy:
    lr: float = config.help_field(1e-3, "learning rate")
    steps: int = config.help_field(10, "steps")
    flag: bool = config.help_field(True, "a switch")
    kind: Literal["a", "b"] = config.help_field("a", "a choice")
    limit: int | None = config.help_field(None, "optional")
    hidden: tuple[int, ...] = config.help_field((4, 4), "widths")


def parse(argv, presets=None):
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, Toy, presets or {})
    return config.resolve(Toy, parser.parse_args(argv), presets)


def test_flags_are_typed():
    cfg = parse(
        ["--lr", "3e-4", "--no-flag", "--kind", "b", "--limit", "7", "--hidden", "8", "16", "32"]
    )
    assert cfg == Toy(lr=3e-4, flag=False, kind="b", limit=7, hidden=(8, 16, 32))
    assert parse(["--limit", "none"]).limit is None


def test_precedence_defaults_preset_file_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 30\nlr: 1e-2\n")  # YAML 1.1 reads 1e-2 as a string; coerced
    presets = {"big": {"steps": 20, "hidden": (64, 64)}}
    cfg = parse(["--preset", "big", "--config", str(path), "--lr", "0.5"], presets)
    assert cfg == Toy(lr=0.5, steps=30, hidden=(64, 64))


def test_yaml_round_trip(tmp_path):
    cfg = Toy(lr=0.25, kind="b", hidden=(3,))
    config.save_yaml(cfg, tmp_path / "c.yaml")
    assert config.load_yaml(Toy, tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"steps": 2.5}, "steps must be an integer"),
        ({"steps": True}, "steps must be int"),
        ({"kind": "c"}, r"kind must be one of \['a', 'b'\]"),
        ({"flag": "yes"}, "flag must be true or false"),
        ({"hidden": "x"}, "hidden must be int"),
        ({"nope": 1}, r"unknown config keys \['nope'\]"),
    ],
)
def test_bad_values_name_the_field(values, message):
    with pytest.raises(ValueError, match=message):
        config.from_dict(Toy, values)


def test_every_training_field_has_help():
    from era_control.sac import SACConfig

    for field in dataclasses.fields(SACConfig):
        assert field.metadata.get("help"), field.name
