"""The noxfile's helpers: the demo summary, the release check, the era-core a range allows."""

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from noxfile import (
    PACKAGES,
    ROOT,
    declared_requirements,
    gather_demo_summaries,
    pick_era_core,
    project,
    release_problems,
)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
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


def copy_workspace(tmp_path: Path) -> Path:
    """The files release_problems reads, copied from this repository."""
    root = Path(__file__).parent
    (tmp_path / "LICENSE").write_text((root / "LICENSE").read_text())
    for package in PACKAGES:
        for name in ("pyproject.toml", "CHANGELOG.md", "README.md", "LICENSE"):
            write(
                tmp_path / "packages" / package / name,
                (root / "packages" / package / name).read_text(),
            )
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_this_repository_is_releasable():
    assert release_problems(Path(__file__).parent) == []


def test_a_version_bump_without_its_changelog_entry_is_found(tmp_path):
    root = copy_workspace(tmp_path)
    version = project(root, "era-vision")["version"]
    edit(root / "packages/era-vision/pyproject.toml", f'version = "{version}"', 'version = "9.0.0"')
    (problem,) = release_problems(root)
    assert problem.startswith("era-vision: CHANGELOG.md starts with") and "9.0.0" in problem


def test_an_era_core_bump_outside_a_domain_range_is_found(tmp_path):
    # The workspace would install era-core 9.0.0 beside packages whose metadata refuses it.
    root = copy_workspace(tmp_path)
    version = project(root, "era-core")["version"]
    edit(root / "packages/era-core/pyproject.toml", f'version = "{version}"', 'version = "9.0.0"')
    edit(root / "packages/era-core/CHANGELOG.md", f"## {version} — ", "## 9.0.0 — ")
    problems = release_problems(root)
    assert len(problems) == 3
    assert all("the workspace's era-core is 9.0.0" in problem for problem in problems)


def test_readme_links_and_licence_copies_that_a_package_index_cannot_show_are_found(tmp_path):
    root = copy_workspace(tmp_path)
    with (root / "packages/era-llm/README.md").open("a") as readme:
        readme.write("\n![plot](docs/plot.png) see ../shared/data/math\n")
    (root / "packages/era-core/LICENSE").write_text("MIT\n")
    problems = release_problems(root)
    assert "era-llm: README.md links 'docs/plot.png', which a package index cannot show" in problems
    assert "era-llm: README.md names 'shared/', which no package ships" in problems
    assert "era-core: LICENSE differs from the repository's LICENSE" in problems
    assert len(problems) == 3


def test_a_tag_must_name_a_package_its_version_and_a_dated_entry(tmp_path):
    root = copy_workspace(tmp_path)
    version = project(root, "era-core")["version"]
    assert any(
        "date its CHANGELOG entry" in p for p in release_problems(root, f"era-core-v{version}")
    )
    edit(
        root / "packages/era-core/CHANGELOG.md",
        f"## {version} — unreleased",
        f"## {version} — 2026-12-03",
    )
    assert release_problems(root, f"era-core-v{version}") == []
    assert release_problems(root, "era-core-v0.0.1") == [
        f"tag 'era-core-v0.0.1' names 0.0.1, era-core's pyproject.toml says {version}"
    ]
    (problem,) = release_problems(root, "core-1.0")
    assert problem.startswith("tag 'core-1.0' is not <package>-v<version>")


def test_the_era_core_a_range_allows_is_picked_lowest_or_newest():
    sources = {Version(v): Path(v) for v in ("0.1.0", "0.2.0", "0.2.3", "0.3.0")}
    assert pick_era_core(">=0.2,<0.3", sources, lowest=True) == Version("0.2.0")
    assert pick_era_core(">=0.2,<0.3", sources, lowest=False) == Version("0.2.3")
    assert pick_era_core("", sources, lowest=False) == Version("0.3.0")
    with pytest.raises(
        ValueError, match=r"no era-core within '>=0.4': have 0.1.0, 0.2.0, 0.2.3, 0.3.0"
    ):
        pick_era_core(">=0.4", sources, lowest=True)


def test_lowest_direct_names_every_floor_of_the_package_and_era_core():
    requirements = declared_requirements(ROOT, "era-control")
    names = {Requirement(r).name for r in requirements}
    assert {"torch", "gymnasium", "mujoco", "dm-control"} <= names  # era-core's, own, the dmc extra
    assert "era-core" not in names  # its wheel is named directly
