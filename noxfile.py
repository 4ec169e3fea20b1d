# /// script
# dependencies = ["nox>=2024.10.9"]
# ///
"""ERA's automation: every CI step is a session here; ci/ only chooses session names.

Each package is tested in its own environment synced with that package alone
(`uv sync --package`), so a package that imports a sibling's dependency fails.

    nox -k "tests and cpu"      # every CPU test of every package (the README's test command)
    nox -s demo                 # the main job of each package on built-in defaults
    ERA_REQUIRE_GPU=1 nox -k "tests and gpu"   # GPU runners: fail, don't skip, without CUDA
"""

import re
import time
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.keywords = "tests and cpu"

ROOT = Path(__file__).parent
PACKAGES = ["era-core", "era-control", "era-llm", "era-vision"]
# Optional extras a package's tests exercise, and those only its benchmarks need.
TEST_EXTRAS = {"era-core": [], "era-control": ["dmc"], "era-llm": ["lora"], "era-vision": ["timm"]}
BENCH_EXTRAS = {"era-core": [], "era-control": ["bench"], "era-llm": ["trl"], "era-vision": []}
# On GPU runners era-llm is tested with the real vLLM engine, which pins its own torch and so
# lives in a separate fork of the lock (see [tool.uv] conflicts): group test-vllm, extra vllm.
GPU_ENVIRONMENTS = {"era-llm": ("test-vllm", ["vllm", "lora"])}
# pytest marker expression per device.
DEVICES = {"cpu": "not gpu", "gpu": "gpu"}
# Each package's demo: the main job on built-in defaults, writing under runs/demo/<package>/,
# including a summary.md that the demo session gathers into runs/demo/SUMMARY.md.
DEMO_ROOT = Path("runs/demo")
DEMOS: dict[str, list[str]] = {
    "era-core": ["python", "-m", "era_core.demo", "--out", "runs/demo/era-core"],
    "era-vision": ["era-vision", "demo", "--out", "runs/demo/era-vision"],
    "era-control": ["era-control", "demo", "--out", "runs/demo/era-control"],
    "era-llm": ["era-llm", "demo", "--output-dir", "runs/demo/era-llm"],
}


def sync(
    session: nox.Session, package: str | None, *groups: str, extras: list[str] | None = None
) -> None:
    """`uv sync` the lock into this session's venv: one package (or none), groups and extras."""
    args = ["uv", "sync", "--frozen", "--no-default-groups"]
    if package is None:
        args += [f"--only-group={group}" for group in groups]
    else:
        args += ["--package", package, *(f"--group={g}" for g in groups)]
        args += [f"--extra={extra}" for extra in extras or []]
    session.run_install(*args, env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location})


@nox.session
@nox.parametrize("device", list(DEVICES))
@nox.parametrize("package", PACKAGES)
def tests(session: nox.Session, package: str, device: str) -> None:
    """Run one package's tests on one device (cpu: `-m "not gpu"`, gpu: `-m gpu`)."""
    group, extras = "test", TEST_EXTRAS[package]
    if device == "gpu":
        group, extras = GPU_ENVIRONMENTS.get(package, (group, extras))
    sync(session, package, group, extras=extras)
    session.run(
        "pytest",
        f"packages/{package}/tests",
        "-m",
        DEVICES[device],
        *session.posargs,
        # A package may have no GPU tests: pytest then collects nothing and exits 5.
        success_codes=[0, 5] if device == "gpu" else [0],
    )


@nox.session(name="noxfile-tests")
@nox.parametrize("device", ["cpu"])
def noxfile_tests(session: nox.Session, device: str) -> None:
    """The noxfile's own helpers (the demo summary), tested beside it; part of `tests and cpu`."""
    sync(session, None, "test", "nox")
    session.run("pytest", "test_noxfile.py", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check over the whole workspace."""
    sync(session, None, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
@nox.parametrize("package", ["era-core"])
def typecheck(session: nox.Session, package: str) -> None:
    """Pyright over a package's sources (strict for era-core, see pyproject.toml)."""
    sync(session, package, "typecheck")
    python = Path(session.virtualenv.location) / "bin" / "python"
    session.run("pyright", "--pythonpath", str(python), f"packages/{package}/src")


@nox.session
@nox.parametrize("package", PACKAGES)
def bench(session: nox.Session, package: str) -> None:
    """Run a package's benchmark scripts; each prints a table and writes JSON to its results/."""
    sync(session, package, "bench", extras=TEST_EXTRAS[package] + BENCH_EXTRAS[package])
    for script in sorted((ROOT / "packages" / package / "benchmarks").glob("bench_*.py")):
        session.run("python", str(script), *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The main job on built-in defaults: each package's demo, then one page, runs/demo/SUMMARY.md."""
    seconds: dict[str, tuple[float, float]] = {}
    for package, command in DEMOS.items():
        # A summary left by an earlier run must not pass for this run's.
        (ROOT / DEMO_ROOT / package / "summary.md").unlink(missing_ok=True)
        start = time.perf_counter()
        sync(session, package)
        synced = time.perf_counter()
        session.run(*command)
        seconds[package] = (synced - start, time.perf_counter() - synced)
    summary = ROOT / DEMO_ROOT / "SUMMARY.md"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(gather_demo_summaries(ROOT / DEMO_ROOT, seconds))
    session.log(f"{'part':<12} {'sync s':>7} {'demo s':>7}")
    for package, (sync_s, run_s) in seconds.items():
        session.log(f"{package:<12} {sync_s:>7.1f} {run_s:>7.1f}")
    total_sync, total_run = (sum(column) for column in zip(*seconds.values()))
    session.log(f"{'total':<12} {total_sync:>7.1f} {total_run:>7.1f}")
    session.log(f"summary: {summary.relative_to(ROOT)}")


# A markdown link or image target: `](target)` or `](target "title")`.
_LINK_TARGET = re.compile(r"(\]\()([^)\s]+)")


def gather_demo_summaries(demo_root: Path, seconds: dict[str, tuple[float, float]]) -> str:
    """SUMMARY.md: a table of wall times, then each part's summary.md in the order run.

    A part's links are relative to its own folder; they are rewritten relative to
    ``demo_root``. A part without a summary.md gets a line saying so, never a silent gap.

    Args:
        demo_root: The folder holding one subfolder per part (``runs/demo``).
        seconds: ``{part: (sync seconds, demo seconds)}``, in the order the parts ran.
    """

    def relink(part: str, text: str) -> str:
        def target(match: re.Match[str]) -> str:
            link = match.group(2)
            absolute = link.startswith(("/", "#")) or re.match(r"^[a-z][a-z0-9+.-]*:", link)
            return match.group(0) if absolute else f"{match.group(1)}{part}/{link}"

        return _LINK_TARGET.sub(target, text)

    lines = [
        "# ERA demo: summary",
        "",
        "Wall time per part (environment sync shown separately).",
        "",
        "| part | sync s | demo s |",
        "| --- | ---: | ---: |",
        *(f"| {part} | {sync_s:.1f} | {run_s:.1f} |" for part, (sync_s, run_s) in seconds.items()),
    ]
    for part in seconds:
        path = demo_root / part / "summary.md"
        if path.is_file():
            section = relink(part, path.read_text().strip())
        else:
            section = f"## {part}\n\n**Missing:** {part} wrote no `{part}/summary.md`."
        lines += ["", section]
    return "\n".join(lines) + "\n"
