# /// script
# dependencies = ["nox>=2024.10.9"]
# ///
"""ERA's automation: every CI step is a session here; ci/ only chooses session names.

Each package is tested in its own environment synced with that package alone
(`uv sync --package`), so a package that imports a sibling's dependency fails.
"""

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["tests"]

ROOT = Path(__file__).parent
PACKAGES = ["era-core", "era-control", "era-llm", "era-vision"]
# Extras installed for a package's tests (optional features it tests when present).
TEST_EXTRAS: dict[str, list[str]] = {
    "era-core": [],
    "era-control": [],
    "era-llm": [],
    "era-vision": [],
}
DEVICES = {"cpu": "not gpu", "gpu": "gpu"}


def sync(session: nox.Session, package: str | None, *groups: str, extras: list[str] = ()) -> None:
    """Install one package (or none) plus dependency groups into the session's venv."""
    args = ["uv", "sync", "--frozen", "--no-default-groups"]
    args += ["--package", package] if package else ["--only-group", groups[0]]
    args += [f"--group={g}" for g in (groups if package else groups[1:])]
    args += [f"--extra={e}" for e in extras]
    session.run_install(
        *args, env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location}
    )


@nox.session
@nox.parametrize("device", list(DEVICES))
@nox.parametrize("package", PACKAGES)
def tests(session: nox.Session, package: str, device: str) -> None:
    """Run one package's tests on one device (cpu: `-m "not gpu"`, gpu: `-m gpu`)."""
    if device == "gpu" and not session.posargs and os.environ.get("ERA_REQUIRE_GPU") != "1":
        session.log("GPU tests skip when CUDA is missing; set ERA_REQUIRE_GPU=1 to fail instead")
    sync(session, package, "test", extras=TEST_EXTRAS[package])
    session.run(
        "pytest", f"packages/{package}/tests", "-m", DEVICES[device], *session.posargs,
        # A GPU-only selection on a package without GPU tests collects nothing (exit 5).
        success_codes=[0, 5] if device == "gpu" else [0],
    )


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check over the whole workspace."""
    sync(session, None, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
@nox.parametrize("package", ["era-core"])
def typecheck(session: nox.Session, package: str) -> None:
    """Strict pyright over a package's sources."""
    sync(session, package, "typecheck")
    src = f"packages/{package}/src"
    session.run("pyright", "--pythonpath", f"{session.virtualenv.location}/bin/python", src)


@nox.session
@nox.parametrize("package", PACKAGES)
def bench(session: nox.Session, package: str) -> None:
    """Run a package's benchmark scripts; each prints a table and writes JSON to benchmarks/results/."""
    sync(session, package, "bench", extras=TEST_EXTRAS[package])
    for script in sorted((ROOT / "packages" / package / "benchmarks").glob("bench_*.py")):
        session.run("python", str(script), *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The main job on built-in defaults: each package's demo, results under runs/demo/."""
    sync(session, "era-core", "test")
    session.run("python", "-m", "era_core.demo", "--out", "runs/demo/era-core")
