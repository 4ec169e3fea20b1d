"""``--help`` is plain text: the docstrings it shows lose their reStructuredText markup."""

import pytest

from era_core.testing import help_text
from era_vision.cli import main


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["plot"], ["demo"]])
def test_help_has_no_rst_double_backticks(command):
    out = help_text(main, command)
    assert out.startswith("usage: era-vision") and "``" not in out
