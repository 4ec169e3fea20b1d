"""The benchmarks' JSON writer names paths relative to the repository, never absolutely."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _runs import REPO, repo_path, write_json


def test_write_json_relativises_paths_inside_the_repository(tmp_path):
    run = REPO / "packages" / "era-control" / "benchmarks" / "results" / "runs" / "x"
    out = tmp_path / "r.json"
    write_json(out, {"setup": {"out": run.parent, "steps": 5}, "rows": [{"run_dir": str(run)}]})
    data = json.loads(out.read_text())
    assert data["setup"] == {"out": "packages/era-control/benchmarks/results/runs", "steps": 5}
    assert data["rows"][0]["run_dir"] == "packages/era-control/benchmarks/results/runs/x"
    assert "/" + REPO.name not in out.read_text()


def test_paths_under_home_are_written_with_a_tilde():
    assert repo_path(Path.home() / "era-runs" / "a") == "~/era-runs/a"


def test_write_json_refuses_a_path_outside_repository_and_home(tmp_path):
    if Path("/proc").resolve().is_relative_to(Path.home().resolve()):
        pytest.skip("home is the file-system root here")
    with pytest.raises(ValueError, match="outside the repository"):
        write_json(tmp_path / "r.json", {"run_dir": "/proc/ppo"})
    assert not (tmp_path / "r.json").exists()
