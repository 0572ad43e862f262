"""nox sessions: tests, lint, typecheck (default); bench and check on demand."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
TORCH = "torch==2.13.0"


def _install(session: nox.Session, extras: str) -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    _install(session, "test")
    session.run("pytest", "-n", "auto", "-q", *session.posargs,
                env={"REIMPL_HYPOTHESIS_PROFILE": "ci"})


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks")


@nox.session
def typecheck(session: nox.Session) -> None:
    _install(session, "dev")
    session.run("mypy")


@nox.session
def check(session: nox.Session) -> None:
    _install(session, "check")
    session.run("reimpl", "check", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    _install(session, "bench,check")
    session.run("reimpl", "bench", *session.posargs)
