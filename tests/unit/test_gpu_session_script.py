"""``benchmarks/gpu_session.sh`` run here, without a GPU (every step then fails or skips
quickly): what it leaves in ``$OUT`` must fit what the device tool brings back -- at most 8
files, no deeper than two folders, names of letters, digits, '.', '_' and '-' -- and its
summary must name every step. A GPU session is too short to find that out there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is for CPU machines")
def test_gpu_session_output_fits_the_device_tool(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "PYTHON": sys.executable,
        "REIMPL_GPU_WORKERS": "1",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    run = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    files = [p.relative_to(out) for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= 8, files
    for f in files:
        assert len(f.parts) <= 3, f"{f}: more than two folders down"
        assert all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in f.parts), f
    summary = (out / "summary.txt").read_text()
    for step in ("bench", "pytest", "check"):
        assert re.search(rf"^{step} rc=\d+ in \d+ s", summary, re.M), summary
    assert "no CUDA device" in summary  # (reimpl check's own words, from its log)
    assert (out / "logs.tar.gz").is_file() and not (out / "logs").exists()
