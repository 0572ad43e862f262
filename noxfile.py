"""nox sessions: tests, lint, typecheck (default); bench and check on demand."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
TORCH = "torch==2.13.0"
#: the declared range's ends (pyproject: torch>=LOWEST): the lowest supported and the newest
#: the registry serves. The registry's builds of these are CUDA wheels (~5 GB; they run on
#: CPU); the pinned CPU wheel above stays the default everywhere else.
COMPAT = ["2.11.0", "2.14.1"]


def _install(session: nox.Session, extras: str) -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    _install(session, "test")
    session.run(
        "pytest", "-n", "auto", "-q", *session.posargs, env={"REIMPL_HYPOTHESIS_PROFILE": "ci"}
    )


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


#: the tests that run native code: fused optimizer paths, malformed state, pointwise losses,
#: normalization layers
SANITIZED = [
    "tests/unit/test_malformed_state.py",
    "tests/unit/test_cpu_fused_subclass.py",
    "tests/unit/test_cpu_fused_nonfinite.py",
    "tests/unit/test_adafactor_fused.py",
    "tests/unit/test_loss_gradgrad.py",
    "tests/parity/test_losses.py",
    "tests/parity/test_optim.py",
    "tests/parity/test_normalization.py",
    "tests/unit/test_normalization_modules.py",
    "tests/unit/test_bce_kernel.py",
    "tests/unit/test_batchnorm_kernel.py",
    "tests/unit/test_batchnorm_kernel_split.py",
    "tests/unit/test_cross_entropy_kernel.py",
    # the worker processes inherit the sanitized build: the C kernels on FSDP2's uneven
    # and empty local shards, SyncBatchNorm's kernel modes across ranks
    "tests/distributed/test_distributed.py::test_syncbn_and_ddp_gloo",
    "tests/distributed/test_distributed.py::test_fused_steps_run_the_kernels_on_fsdp2_local_shards",
]


@nox.session(venv_backend="none")
def sanitize(session: nox.Session) -> None:
    """The C kernels built with AddressSanitizer + UBSan (REIMPL_SANITIZE=1), the tests that
    reach them run against that build in the current environment (``make`` puts nox in
    .venv). Any report aborts the process, and so fails the run; leak reports are off
    (CPython itself does not free everything at exit)."""
    cc = os.environ.get("CC", "cc")
    preload = []
    # libasan first; libstdc++ right after, or ASan's C++ exception interceptor finds no
    # real __cxa_throw to call and aborts on torch's first (caught) C++ exception
    for name in ("libasan.so", "libstdc++.so"):
        found = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True)
        lib = Path(found.stdout.strip())
        if found.returncode != 0 or not lib.is_absolute() or not lib.exists():
            session.error(f"{cc} has no {name}: install the compiler's sanitizer runtime")
        preload.append(str(lib.resolve()))
    env = {
        "REIMPL_SANITIZE": "1",
        "LD_PRELOAD": " ".join(preload),
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:alloc_dealloc_mismatch=0",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        "REIMPL_HYPOTHESIS_PROFILE": "quick",
        "REIMPL_DISABLE_TRITON": "1",  # the interpreter is Python: nothing native to check
    }
    session.run(
        sys.executable, "-m", "pytest", "-q", "-n", "2", *SANITIZED, *session.posargs, env=env
    )


@nox.session
@nox.parametrize("torch_version", COMPAT)
def compat(session: nox.Session, torch_version: str) -> None:
    """The test suite and `reimpl check --quick` against each end of the supported range
    (the ``quick`` hypothesis profile: this run looks for version drift; the full ``ci``
    profile runs on the pinned torch in ``make test``)."""
    session.install(f"torch=={torch_version}")
    session.install("-e", ".[test,check]")
    if torch_version.startswith("2.11."):
        # torch 2.11 pins triton 3.6, whose CPU interpreter (the Triton kernel tests' only
        # way to run here) converts one-element arrays to ints, which numpy 2.4 refuses
        session.install("numpy<2.4")
    env = {"REIMPL_HYPOTHESIS_PROFILE": "quick"}
    session.run("pytest", "-n", "2", "-q", "-p", "no:cacheprovider", *session.posargs, env=env)
    session.run("reimpl", "check", "--quick", "--device", "cpu", env=env)
