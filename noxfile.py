"""Development sessions: ``nox`` runs tests, lint, mypy and docs; see CONTRIBUTING.md.

Each session installs what it needs from PyPI into its own virtualenv, so
they work on a fresh machine that has only Python and nox.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_external_run = True
nox.options.sessions = ["tests", "tests-speed", "lint", "mypy", "docs"]

ROOT = Path(__file__).parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# Every version the classifiers promise; nox skips the ones not installed
# (unless --error-on-missing-interpreters, which CI systems may set).
PYTHONS = [
    classifier.rsplit(" ", 1)[-1]
    for classifier in PYPROJECT["project"]["classifiers"]
    if classifier.startswith("Programming Language :: Python :: 3.")
]

# The pinned ruff and import-linter of the `dev` extra, so that nox, CI and
# pre-commit agree.
DEV = PYPROJECT["project"]["optional-dependencies"]["dev"]
RUFF = next(req for req in DEV if req.startswith("ruff"))
IMPORT_LINTER = next(req for req in DEV if req.startswith("import-linter"))


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the tests (tests/, docs/, README.md, docstrings) with branch coverage."""
    session.install("-e", ".[tests]")
    session.run(
        "python",
        "-m",
        "pytest",
        "--cov=replipoll",
        "--cov-branch",
        "--cov-report=term-missing:skip-covered",
        *session.posargs,
        env={"COVERAGE_FILE": f".coverage.{session.python}"},
    )


@nox.session(name="tests-speed", python=PYTHONS)
def tests_speed(session: nox.Session) -> None:
    """The tests again with the speed extra: on uvloop, JSON parsed by msgspec."""
    session.install("-e", ".[tests,speed]")
    session.run(
        "python",
        "-m",
        "pytest",
        *session.posargs,
        # conftest.py puts every event loop on uvloop, and stops at once if
        # the fast path is not in use.
        env={"REPLIPOLL_TEST_FAST_PATH": "1"},
    )


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff (lint rules, formatting: check only) and the import layers."""
    session.install("-e", ".", RUFF, IMPORT_LINTER)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session
def mypy(session: nox.Session) -> None:
    """mypy --strict on the package, and on tests/typing/usage.py (user code)."""
    session.install("-e", ".[typing]")
    session.run("mypy", "--strict", "replipoll", "tests/typing/usage.py")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML docs with warnings as errors and nitpicky references."""
    session.install("-e", ".[docs]")
    shutil.rmtree(ROOT / "docs" / "_build", ignore_errors=True)
    builder = session.posargs[0] if session.posargs else "html"
    # fmt: off
    args = [
        "-T", "-E",             # full tracebacks, fresh environment
        "-W", "--keep-going",   # warnings are errors; report them all
        "-n",                   # nitpicky: every reference must resolve
        "-b", builder,
        "-d", "docs/_build/doctrees",
        "docs", f"docs/_build/{builder}",
    ]
    # fmt: on
    session.run("python", "-m", "sphinx", *args)


@nox.session
def docs_linkcheck(session: nox.Session) -> None:
    """Check the docs' external links (needs the internet; not run by default)."""
    session.install("-e", ".[docs]")
    session.run(
        "python",
        "-m",
        "sphinx",
        "-b",
        "linkcheck",
        "-d",
        "docs/_build/doctrees",
        "docs",
        "docs/_build/linkcheck",
        env={"REPLIPOLL_DOCS_INTERSPHINX": "1"},
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks (bench/run_all.py) against the local fake server."""
    session.install("-e", ".[bench]")
    session.run("python", "bench/run_all.py", *session.posargs)


@nox.session
def coverage_report(session: nox.Session) -> None:
    """Combine the coverage files of several `tests` runs into one report."""
    session.install("coverage[toml]>=7")
    files = [str(path) for path in ROOT.glob(".coverage.*")]
    if not files:
        session.skip("no coverage data; run `nox -s tests` first")
    session.run("coverage", "combine", "--keep", *files)
    session.run("coverage", "report")
