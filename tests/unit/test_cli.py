"""The command line: `reimpl check` and `reimpl bench` run and report (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def test_bench_writes_json_markdown_and_png(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    import reimpl_parity.bench as bench

    kept: list[bool] = []

    def keep() -> bool:  # (not applied here: it would change this test process's malloc)
        kept.append(True)
        return True

    monkeypatch.setattr(bench, "keep_freed_memory", keep)
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
    assert rc == 0 and kept == [True]
    data = json.loads((tmp_path / "cpu.json").read_text())
    assert data["torch"] and data["device"] and data["results"][0]["case"].startswith("mse_loss")
    assert (tmp_path / "cpu.md").read_text().startswith("Device:")
    assert (tmp_path / "cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_names_a_failing_case_and_times_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import reimpl_parity.bench as bench

    timed = bench.time_pair
    monkeypatch.setattr(bench, "keep_freed_memory", lambda: True)
    failures: list[str] = []
    cases = [(f"mse_loss {i}", lambda: None, lambda: None) for i in range(2)]
    monkeypatch.setattr(bench, "_loss_cases", lambda device, scale: iter(cases))
    calls = iter([RuntimeError("kernel launch failed"), None])

    def time_pair(ours: Any, theirs: Any, device: str, **kw: Any) -> Any:
        err = next(calls)
        if err is not None:
            raise err
        return timed(ours, theirs, device, **kw)

    monkeypatch.setattr(bench, "time_pair", time_pair)
    out = bench.run("cpu", quick=True, reps=1, only="mse_loss", failures=failures)
    assert [r.case for r in out] == ["mse_loss 1"]
    assert failures == ["mse_loss 0: RuntimeError: kernel launch failed"]
    assert "mse_loss 0" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="kernel launch failed"):  # no list: it propagates
        calls = iter([RuntimeError("kernel launch failed")])
        bench.run("cpu", quick=True, reps=1, only="mse_loss")


def test_bench_stopped_by_sigterm_reports_the_cases_done(tmp_path: Path) -> None:
    """A time limit's SIGTERM (the GPU session's) leaves the JSON/Markdown of what ran."""
    pytest.importorskip("matplotlib")
    import signal

    cmd = [sys.executable, "-m", "reimpl", "bench", "--device", "cpu", "--quick"]
    cmd += ["--reps", "1", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # the first timed case, then the signal
        lines.append(line)
        if "ratio" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=300)
    text = "".join(lines) + rest
    assert proc.returncode == 1, text
    assert "stopped (SIGTERM)" in text, text
    data = json.loads((tmp_path / "cpu.json").read_text())
    assert data["results"] and data["results"][0]["case"] in text
    assert [f for f in data["failed"] if "stopped (SIGTERM)" in f], data["failed"]
    assert "stopped (SIGTERM)" in (tmp_path / "cpu.md").read_text()


# --------------------------------------------------- `reimpl check` never crashes


def _one_case(monkeypatch: pytest.MonkeyPatch, **changes: object) -> str:
    """Make `reimpl check --components losses` run one MSE row, altered by ``changes``."""
    import dataclasses

    from reimpl_parity.cases import ALL

    case = next(c for c in ALL["losses"] if c.name.startswith("mse_loss"))
    monkeypatch.setitem(ALL, "losses", [dataclasses.replace(case, **changes)])
    return case.name


def _check(*extra: str) -> list[str]:
    base = ["check", "--quick", "--device", "cpu", "--components", "losses"]
    return [*base, "--dtypes", "float32", *extra]


def test_a_real_mismatch_exits_nonzero_with_the_call(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import reimpl.nn.functional as F

    def broken(*args: object, **kwargs: object) -> object:  # a deliberately wrong reimpl
        return F.mse_loss(*args, **kwargs) * 1.01  # type: ignore[operator]

    name = _one_case(monkeypatch, ours=broken)
    assert main(_check()) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and f"{name}(" in out  # the row, and the call to reproduce it


def test_an_exception_inside_a_case_is_a_row_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def explodes(*args: object, **kwargs: object) -> object:
        raise SystemError("the oracle broke")  # not an error torch's API would raise

    from reimpl_parity import harness

    real = harness.run_side

    def run_side(fn: object, *args: object, **kwargs: object) -> object:
        if fn is explodes:
            raise KeyError("inside the harness")
        return real(fn, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(harness, "run_side", run_side)
    _one_case(monkeypatch, theirs=explodes)
    assert main(_check()) == 1
    out = capsys.readouterr().out
    assert "ERROR" in out and "KeyError" in out and "while checking mse_loss" in out


def test_torch_side_differences_fail_only_when_strict(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def torch_without_kernel(*args: object, **kwargs: object) -> object:
        raise NotImplementedError("\"mse_backward_cpu_out\" not implemented for 'Float'")

    _one_case(monkeypatch, theirs=torch_without_kernel)
    assert main(_check()) == 0
    out = capsys.readouterr().out
    assert "torch-side" in out and "fails only with --strict" in out
    assert main(_check("--strict")) == 1


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_bench_keeps_freed_memory_under_glibc() -> None:
    """The benchmark's allocator setting takes (in a child: it is process-wide)."""
    code = "from reimpl_parity.bench import keep_freed_memory as k; print(k())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
