"""The command line: `reimpl check` and `reimpl bench` run and report (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reimpl.__main__ import main


def test_check_reports_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "parity.json"
    rc = main(
        [
            "check",
            "--quick",
            "--device",
            "cpu",
            "--components",
            "losses",
            "--dtypes",
            "float32",
            "--json",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "cross_entropy[index]" in text and "0 failed" in text
    data = json.loads(out.read_text())
    assert data["results"] and all(r["ok"] for r in data["results"])
    assert {r["dtype"] for r in data["results"]} == {"float32"}


def test_check_rejects_unknown_component() -> None:
    with pytest.raises(SystemExit):
        main(["check", "--components", "nope"])


def test_bench_writes_json_markdown_and_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rc = main(
        [
            "bench",
            "--device",
            "cpu",
            "--quick",
            "--reps",
            "1",
            "--only",
            "mse_loss",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    data = json.loads((tmp_path / "cpu.json").read_text())
    assert data["torch"] and data["device"] and data["results"][0]["case"].startswith("mse_loss")
    assert (tmp_path / "cpu.md").read_text().startswith("Device:")
    assert (tmp_path / "cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
