"""`reimpl demo` at small settings: both runs agree with each other and learn something."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("sklearn")
if not hasattr(pytest.importorskip("reimpl.optim"), "SGD"):
    pytest.skip("needs the optimizers", allow_module_level=True)

from reimpl.__main__ import main
from reimpl_parity.demo import results


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_demo_runs_match_torch(optimizer: str) -> None:
    theirs, ours = results(epochs=2, optimizer=optimizer)
    assert len(ours.losses) == len(theirs.losses) == 2
    for a, b in zip(theirs.losses, ours.losses, strict=True):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (theirs.losses, ours.losses)
    assert ours.lrs == theirs.lrs
    assert ours.test_acc > 0.5 and abs(ours.test_acc - theirs.test_acc) <= 0.02
    assert abs(ours.ema_acc - theirs.ema_acc) <= 0.02


def test_demo_cli_writes_pictures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    assert main(["demo", "--epochs", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "largest loss difference" in out
    for name in ("demo_loss_curves.png", "lr_schedules.png", "ewa.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
