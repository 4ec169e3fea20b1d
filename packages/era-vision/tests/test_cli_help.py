"""``--help`` is plain text: the docstrings it shows lose their reStructuredText markup."""

import pytest

from era_vision.cli import main


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["plot"], ["demo"]])
def test_help_has_no_rst_double_backticks(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: era-vision")
    assert "``" not in out
