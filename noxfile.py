# /// script
# dependencies = ["nox>=2024.10.9"]
# ///
"""ERA's automation: every CI step is a session here; ci/ only chooses session names.

Each package is tested in its own environment synced with that package alone
(`uv sync --package`), so a package that imports a sibling's dependency fails.

    nox                         # the README's test command: CPU tests, lint, types, release check
    nox -s demo                 # the main job of each package on built-in defaults
    nox -k installed            # the built wheels, as users install them (CPU runners, ~1 h)
    ERA_REQUIRE_GPU=1 nox -k "tests and gpu"   # GPU runners: fail, don't skip, without CUDA
    nox -s gpu-bench            # GPU runners: the short GPU benchmarks
"""

import datetime
import re
import subprocess
import time
import tomllib
from pathlib import Path

import nox
from packaging.requirements import Requirement
from packaging.version import Version

nox.options.default_venv_backend = "uv"
nox.options.keywords = "(tests and cpu) or lint or typecheck or release"

ROOT = Path(__file__).parent
PACKAGES = ["era-core", "era-control", "era-llm", "era-vision"]
# Optional extras a package's tests exercise, and those only its benchmarks need.
TEST_EXTRAS = {"era-core": [], "era-control": ["dmc"], "era-llm": ["lora"], "era-vision": ["timm"]}
BENCH_EXTRAS = {"era-core": [], "era-control": ["bench"], "era-llm": ["trl"], "era-vision": []}
# On GPU runners era-llm is tested with the real vLLM engine, which pins its own torch and so
# lives in a separate fork of the lock (see [tool.uv] conflicts): group test-vllm, extra vllm.
GPU_ENVIRONMENTS = {"era-llm": ("test-vllm", ["vllm", "lora"])}
# The short GPU benchmarks ci/gpu.sh runs after the GPU tests (about 4 minutes on one H200),
# as (script, arguments) per package; each writes its results/*-cuda JSON.
GPU_BENCHMARKS: dict[str, list[tuple[str, ...]]] = {
    "era-core": [
        ("bench_activations.py", "--device", "cuda"),
        ("bench_entropy.py", "--device", "cuda"),
    ],
    "era-llm": [("bench_loss.py", "--device", "cuda")],
    "era-vision": [("bench_overhead.py", "--device", "cuda", "--reps", "30")],
    "era-control": [
        ("bench_throughput.py", "--device", "cuda", "--ensemble", "8", "32", "--skip-sb3",
         "--warmup", "200", "--steps", "200", "--threads", "1"),
        # The paper's TD-MPC2 setting (DMC dog, the 5M model), as a short cost smoke.
        ("bench_tdmpc2.py", "throughput", "--task", "dm_control/dog-run-v0", "--model-size", "5M",
         "--device", "cuda", "--calls", "20", "--repeats", "3"),
    ],
}  # fmt: skip
# The Python versions every package declares (its classifiers); the first is the one CI's test
# command runs on, the others are run by the installed-wheel sessions.
PYTHONS = ["3.11", "3.12", "3.13"]
# What users install, as (python, dependencies): "newest" takes the newest versions the ranges
# allow and the newest era-core, "lowest-core" the lowest era-core the package's range allows,
# "lowest-direct" every direct dependency at its floor (uv's --resolution lowest-direct).
INSTALLS = [
    *((PYTHONS[0], deps) for deps in ("newest", "lowest-core", "lowest-direct")),
    *((python, "newest") for python in PYTHONS[1:]),
]
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
@nox.parametrize("package", PACKAGES)
def typecheck(session: nox.Session, package: str) -> None:
    """Pyright over a package's sources (strict for era-core, see pyproject.toml)."""
    sync(session, package, "typecheck", extras=TEST_EXTRAS[package])  # peft, timm are imported
    python = Path(session.virtualenv.location) / "bin" / "python"
    session.run("pyright", "--pythonpath", str(python), f"packages/{package}/src")


@nox.session(name="release-check", python=False)
def release_check(session: nox.Session) -> None:
    """Versions, changelogs, licences and READMEs agree; `-- era-core-v0.3.0` also checks a tag."""
    problems = release_problems(ROOT, session.posargs[0] if session.posargs else None)
    if problems:
        session.error("not releasable:\n  " + "\n  ".join(problems))
    session.log(
        "release metadata agrees: "
        + ", ".join(f"{p} {project(ROOT, p)['version']}" for p in PACKAGES)
    )


@nox.session
@nox.parametrize("python,deps", INSTALLS)
@nox.parametrize("package", PACKAGES)
def installed(session: nox.Session, package: str, deps: str) -> None:
    """A package's tests against its wheel as a user installs it, beside the era-core wheel.

    Both are built with `uv build --no-sources` (so the published ranges, not the workspace,
    decide what is installed) into a fresh venv; src/ is not on the path, the wheel is tested.
    """
    if package == "era-core" and deps == "lowest-core":
        session.skip("era-core is the core itself")
    # Not session.create_tmp(): it also points TMPDIR there, and under a path that long the
    # Unix sockets DataLoader workers hand batches through cannot be bound (era-vision refuses).
    scratch = Path(session.virtualenv.location) / "tmp"
    scratch.mkdir(exist_ok=True)
    core_sources = era_core_sources(ROOT, scratch)
    core_range = era_core_range(ROOT, package)
    core_version = pick_era_core(core_range, core_sources, lowest=deps != "newest")
    session.log(
        f"era-core {core_version}: of {sorted(map(str, core_sources))}, within '{core_range}'"
    )
    wanted = [str(build_wheel(session, core_sources[core_version], scratch / "era-core-wheel"))]
    if package != "era-core":
        wheel = build_wheel(session, ROOT / "packages" / package, scratch / "wheel")
        extras = ",".join(TEST_EXTRAS[package])
        wanted.append(f"{wheel}[{extras}]" if extras else str(wheel))
    # The wheels' own requirements are transitive to the installer: name them, so that
    # lowest-direct puts torch, gymnasium, transformers... at their floors, not only pytest.
    floors = ["--resolution", "lowest-direct", *declared_requirements(ROOT, package)]
    session.install(
        *(floors if deps == "lowest-direct" else []), *wanted, *dependency_group(ROOT, "test")
    )
    module = package.replace("-", "_")
    session.run(
        "python",
        "-c",
        f"import {module}; assert 'site-packages' in {module}.__file__, {module}.__file__",
    )
    session.run("uv", "pip", "freeze")  # the versions this session tested, in its log
    session.run(
        "pytest",
        f"packages/{package}/tests",
        "-m",
        "not gpu",
        "-p",
        "no:cacheprovider",
        *session.posargs,
    )


@nox.session
@nox.parametrize("package", PACKAGES)
def bench(session: nox.Session, package: str) -> None:
    """Run a package's benchmark scripts; each prints a table and writes JSON to its results/."""
    sync(session, package, "bench", extras=TEST_EXTRAS[package] + BENCH_EXTRAS[package])
    for script in sorted((ROOT / "packages" / package / "benchmarks").glob("bench_*.py")):
        session.run("python", str(script), *session.posargs)


@nox.session(name="gpu-bench")
@nox.parametrize("package", list(GPU_BENCHMARKS))
def gpu_bench(session: nox.Session, package: str) -> None:
    """A package's short GPU benchmarks (GPU_BENCHMARKS), in the environment `bench` uses."""
    sync(session, package, "bench", extras=TEST_EXTRAS[package] + BENCH_EXTRAS[package])
    for script, *args in GPU_BENCHMARKS[package]:
        session.run("python", str(ROOT / "packages" / package / "benchmarks" / script), *args)


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


def build_wheel(session: nox.Session, source: Path, out: Path) -> Path:
    """Build one wheel from ``source`` as a package index would (no workspace sources)."""
    for old in out.glob("*.whl"):
        old.unlink()
    session.run("uv", "build", "--wheel", "--no-sources", "--out-dir", str(out), str(source))
    (wheel,) = out.glob("*.whl")
    return wheel


def project(root: Path, package: str) -> dict:
    """The ``[project]`` table of a package's pyproject.toml."""
    with (root / "packages" / package / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)["project"]


def dependency_group(root: Path, group: str) -> list[str]:
    """The requirements of one of the workspace's dependency groups."""
    with (root / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)["dependency-groups"][group]


def declared_requirements(root: Path, package: str) -> list[str]:
    """What a package and era-core require, with the package's test extras (era-core's range
    itself left out: its wheel is named directly)."""
    requirements = []
    for name, extras in {"era-core": [], package: TEST_EXTRAS[package]}.items():
        table = project(root, name)
        requirements += table["dependencies"]
        requirements += [r for extra in extras for r in table["optional-dependencies"][extra]]
    return sorted({r for r in requirements if Requirement(r).name != "era-core"})


def era_core_range(root: Path, package: str) -> str:
    """The era-core versions a package's metadata allows (``""``, any, for era-core itself)."""
    for line in project(root, package)["dependencies"]:
        requirement = Requirement(line)
        if requirement.name == "era-core":
            return str(requirement.specifier)
    return ""


def era_core_sources(root: Path, scratch: Path) -> dict[Version, Path]:
    """Every era-core a user could install: each released tag (exported under ``scratch``), and
    the workspace's version, whose source is ``packages/era-core``."""
    sources = {Version(project(root, "era-core")["version"]): root / "packages" / "era-core"}
    tags = subprocess.run(
        ["git", "tag", "--list", "era-core-v*"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for tag in tags:
        folder = scratch / tag
        if not folder.exists():
            folder.mkdir(parents=True)
            archive = subprocess.run(
                ["git", "archive", tag, "packages/era-core"],
                cwd=root,
                capture_output=True,
                check=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
        sources.setdefault(
            Version(tag.removeprefix("era-core-v")), folder / "packages" / "era-core"
        )
    return sources


def pick_era_core(specifier: str, sources: dict[Version, Path], *, lowest: bool) -> Version:
    """The lowest (or newest) era-core among ``sources`` that ``specifier`` allows."""
    allowed = sorted(Requirement(f"era-core{specifier}").specifier.filter(sources))
    if not allowed:
        raise ValueError(
            f"no era-core within '{specifier}': have {', '.join(map(str, sorted(sources)))}"
        )
    return allowed[0] if lowest else allowed[-1]


_CHANGELOG_ENTRY = re.compile(r"^## (\S+) — (unreleased|\d{4}-\d{2}-\d{2})$", re.MULTILINE)
_TAG = re.compile(r"^(era-[a-z]+)-v(\S+)$")


def release_problems(root: Path, tag: str | None = None) -> list[str]:
    """What stops a release, one line each (empty: releasable).

    Every package: its CHANGELOG's first entry is ``## <pyproject version> — unreleased`` (or a
    date), its LICENSE is the repository's, its README renders on a package index (links are
    absolute; nothing points into ``shared/``), and a domain package's era-core range allows the
    workspace's era-core. With ``tag`` (``<package>-v<version>``): that package has that version
    and its entry is dated.
    """
    problems = []
    licence = (root / "LICENSE").read_text()
    core_version = project(root, "era-core")["version"]
    for package in PACKAGES:
        folder, version = root / "packages" / package, project(root, package)["version"]
        entry = _CHANGELOG_ENTRY.search((folder / "CHANGELOG.md").read_text())
        if entry is None or entry.group(1) != version:
            found = (
                f"'## {entry.group(1)} — {entry.group(2)}'"
                if entry
                else "no '## X.Y.Z — ...' entry"
            )
            problems.append(
                f"{package}: CHANGELOG.md starts with {found}, pyproject.toml says {version}"
            )
        if not (folder / "LICENSE").is_file() or (folder / "LICENSE").read_text() != licence:
            problems.append(f"{package}: LICENSE differs from the repository's LICENSE")
        readme = (folder / "README.md").read_text()
        for link in _LINK_TARGET.findall(readme):
            if not re.match(r"^(https?:|mailto:|#)", link[1]):
                problems.append(
                    f"{package}: README.md links '{link[1]}', which a package index cannot show"
                )
        if "shared/" in readme:
            problems.append(f"{package}: README.md names 'shared/', which no package ships")
        core_range = era_core_range(root, package)
        if (
            package != "era-core"
            and Version(core_version) not in Requirement(f"era-core{core_range}").specifier
        ):
            problems.append(
                f"{package}: requires era-core{core_range}, the workspace's era-core is {core_version}"
            )
    if tag is not None:
        match = _TAG.match(tag)
        if match is None or match.group(1) not in PACKAGES:
            return [
                *problems,
                f"tag '{tag}' is not <package>-v<version> for one of {', '.join(PACKAGES)}",
            ]
        package, tagged = match.groups()
        version = project(root, package)["version"]
        entry = _CHANGELOG_ENTRY.search((root / "packages" / package / "CHANGELOG.md").read_text())
        if tagged != version:
            problems.append(
                f"tag '{tag}' names {tagged}, {package}'s pyproject.toml says {version}"
            )
        elif entry is not None and entry.group(2) == "unreleased":
            today = datetime.date.today().isoformat()
            problems.append(
                f"{package}: date its CHANGELOG entry ('## {version} — {today}') before tagging"
            )
    return problems
