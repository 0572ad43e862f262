"""The failure log the GPU session reads when its pytest run is cut off (conftest's
``pytest_runtest_logreport`` under ``REIMPL_FAILURE_LOG``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist"])
def test_failures_are_appended_as_they_happen(tmp_path: Path, workers: list[str]) -> None:
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    (tmp_path / "test_x.py").write_text(
        "def test_fails():\n    assert 1 == 2, 'one is not two'\n\ndef test_passes():\n    pass\n"
    )
    log = tmp_path / "failures.txt"
    env = {"REIMPL_FAILURE_LOG": str(log), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers, str(tmp_path)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": ":".join(sys.path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    text = log.read_text()
    assert text.count("===== test_x.py::test_fails (call)") == 1 and "one is not two" in text
    assert "test_passes" not in text
