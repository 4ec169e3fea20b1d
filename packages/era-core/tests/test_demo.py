import errno
from pathlib import Path

import pytest

from era_core import demo


def test_demo_writes_a_summary_with_a_table_and_a_computed_sentence(tmp_path, capsys):
    demo.main(["--out", str(tmp_path), "--classes", "50"])
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("## era-core\n")
    assert summary.count("\n| ") == 2 + len(demo.SCALES)  # header, rule, one row per scale
    assert "the floors held at every scale." in summary
    assert (tmp_path / "summary.json").is_file()
    assert str(tmp_path / "summary.md") in capsys.readouterr().out


def test_verdict_reports_a_broken_floor():
    rows = demo.measure(classes=20, min_entropy=0.6, gaussian_target=1.5, rows=8)
    assert demo.verdict(rows, 0.6, 1.5).endswith("held at every scale.")
    rows[2]["era_tight"] = 0.5
    assert demo.verdict(rows, 0.6, 1.5).endswith("were NOT held at every scale.")


def test_infeasible_floor_is_one_line(tmp_path, capsys):
    assert demo.main(["--classes", "10", "--min-entropy", "5", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--min-entropy" in err
    assert not (tmp_path / "summary.md").exists()


# The corpus: every numeric flag has a bad value, checked against the parser.
BAD_VALUES = {
    "classes": ["1", "0", "-5", "many"],
    "min_entropy": ["-1", "nan", "1e9", "low"],
}


def test_every_numeric_flag_has_bad_values():
    parser = demo.build_parser()
    numeric = {a.dest for a in parser._actions if a.type in (int, float)}
    assert numeric == set(BAD_VALUES)


@pytest.mark.parametrize(
    ("field", "value"), [(f, v) for f, values in BAD_VALUES.items() for v in values]
)
def test_a_bad_value_is_one_line_naming_the_flag(tmp_path, capsys, field, value):
    flag = "--" + field.replace("_", "-")
    try:
        code = demo.main([f"{flag}={value}", "--out", str(tmp_path / "out")])
    except SystemExit as exited:  # argparse: not a number
        code = exited.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and flag in err, err
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert demo.main(["--classes", "10", "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "file" in err, err


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no path

    monkeypatch.setattr(Path, "write_text", full)
    assert demo.main(["--classes", "10", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: No space left on device") and "summary.json" in err, err
