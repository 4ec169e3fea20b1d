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
