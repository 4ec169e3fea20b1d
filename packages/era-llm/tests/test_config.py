from dataclasses import dataclass
from typing import Literal

import pytest
import yaml

from era_core.testing import help_text
from era_llm.cli import main
from era_llm.config import help_field, parse_config, save_config


@dataclass(kw_only=True)
class Example:
    """An example config."""

    name: str = help_field(help="required name")
    lr: float = help_field(1e-3, "learning rate")
    steps: int = help_field(10, "steps")
    mode: Literal["a", "b"] = help_field("a", "mode")
    flag: bool = help_field(True, "a switch")
    limit: int | None = help_field(None, "optional limit")
    files: list[str] = help_field(default_factory=list, help="files")  # noqa: RUF009

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


def test_flags_override_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nlr: 1e-6\nsteps: 3\n")  # YAML reads 1e-6 as a string
    cfg = parse_config(
        Example,
        ["--config", str(path), "--steps", "5", "--no-flag", "--limit", "7", "--files", "a", "b"],
    )
    assert (cfg.name, cfg.lr, cfg.steps, cfg.flag, cfg.limit, cfg.files) == (
        "x",
        1e-6,
        5,
        False,
        7,
        ["a", "b"],
    )
    assert parse_config(Example, ["--name", "y", "--limit", "none"]).limit is None


def test_a_list_flag_may_repeat_and_a_yaml_string_is_one_item(tmp_path):
    cfg = parse_config(Example, ["--name", "x", "--files", "a", "--files", "b", "c"])
    assert cfg.files == ["a", "b", "c"]
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nfiles: only\n")
    assert parse_config(Example, ["--config", str(path)]).files == ["only"]
    path.write_text("name: x\nfiles: [1, 2]\n")
    with pytest.raises(ValueError, match="files must be a string or a list of strings"):
        parse_config(Example, ["--config", str(path)])


def test_required_unknown_and_invalid(tmp_path):
    with pytest.raises(ValueError, match=r"missing required option.*--name"):
        parse_config(Example, [])
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nbogus: 1\n")
    with pytest.raises(ValueError, match=r"unknown fields \['bogus'\]"):
        parse_config(Example, ["--config", str(path)])
    with pytest.raises(SystemExit):
        parse_config(Example, ["--name", "x", "--mode", "c"])
    with pytest.raises(ValueError, match="steps must be"):
        parse_config(Example, ["--name", "x", "--steps", "0"])


def test_saved_config_round_trips(tmp_path):
    cfg = parse_config(Example, ["--name", "x", "--mode", "b", "--files", "f"])
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["mode"] == "b"
    assert parse_config(Example, ["--config", str(tmp_path / "config.yaml")]) == cfg


@pytest.mark.parametrize("command", ["train", "eval", "demo"])
def test_help_has_no_rst_double_backticks(command):
    # The help shows the config's docstring, which is reStructuredText.
    out = help_text(main, [command])
    assert out.startswith(f"usage: era-llm {command}") and "``" not in out
