"""reimpl must not hand its work to torch's own implementations (DEVELOPERS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCAN = ROOT.parent / "shared" / "tools" / "from_scratch.py"


@pytest.mark.skipif(not SCAN.exists(), reason="../shared/tools/from_scratch.py not beside the repo")
def test_no_calls_into_torch_implementations() -> None:
    res = subprocess.run([sys.executable, str(SCAN)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and "from-scratch: 0 violations" in res.stdout, (
        res.stdout + res.stderr
    )
