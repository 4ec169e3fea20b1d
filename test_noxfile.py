"""The demo session's SUMMARY.md gathering, on fake summary files (run by `nox -s noxfile-tests`)."""

from pathlib import Path

from noxfile import gather_demo_summaries


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(text)


def test_summaries_are_gathered_in_order_with_links_relative_to_the_demo_root(tmp_path):
    write(
        tmp_path / "era-core" / "summary.md",
        "## era-core\n\n| a |\n| --- |\n| 1 |\n\nThe floor held.\n",
    )
    write(
        tmp_path / "era-vision" / "summary.md",
        '## era-vision\n\n![curves](curves.png) [table](plots/t.png "title") '
        "[paper](https://arxiv.org/abs/2510.08549) [top](#era-vision) [abs](/tmp/x.png)\n",
    )
    seconds = {"era-core": (1.0, 7.25), "era-vision": (12.0, 80.0), "era-llm": (3.0, 9.0)}
    summary = gather_demo_summaries(tmp_path, seconds)

    assert (
        summary.index("## era-core") < summary.index("## era-vision") < summary.index("## era-llm")
    )
    assert "| era-core | 1.0 | 7.2 |" in summary and "| era-vision | 12.0 | 80.0 |" in summary
    assert "The floor held." in summary
    assert "![curves](era-vision/curves.png)" in summary
    assert '[table](era-vision/plots/t.png "title")' in summary
    # Links that do not point into the part's folder stay as they are.
    assert "(https://arxiv.org/abs/2510.08549)" in summary
    assert "(#era-vision)" in summary and "(/tmp/x.png)" in summary


def test_a_missing_summary_is_said_plainly(tmp_path):
    write(tmp_path / "era-core" / "summary.md", "## era-core\n\nok\n")
    summary = gather_demo_summaries(tmp_path, {"era-core": (0.0, 1.0), "era-llm": (0.0, 2.0)})
    assert "## era-llm\n\n**Missing:** era-llm wrote no `era-llm/summary.md`." in summary
