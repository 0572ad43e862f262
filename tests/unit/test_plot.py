"""reimpl.plot writes PNGs (matplotlib optional) and says how to install it when missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from reimpl import plot

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def test_lr_schedules_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "lr.png"
    fig = plot.plot_lr_schedules(path=out)
    assert _is_png(out)
    assert len(fig.axes[0].lines) == 3 and len(fig.axes[0].lines[0].get_xdata()) == 200


def test_ewa_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "ewa.png"
    fig = plot.plot_ewa(path=out)
    assert _is_png(out)
    assert [ln.get_label() for ln in fig.axes[0].lines] == [
        "observed",
        "EWA β = 0.5",
        "EWA β = 0.9",
    ]


def test_seed_traces() -> None:
    traces = {k: plot.lr_trace(f, 200) for k, f in plot.seed_schedules().items()}
    step, multi, expo = traces.values()
    assert step[49] == 0.1 and step[50] == pytest.approx(0.05)
    assert multi[59] == 0.1 and multi[60] == pytest.approx(0.02)
    assert expo[10] == pytest.approx(0.1 * 0.98**10)
    assert len(plot.demo_temperatures()) == 30


def test_missing_matplotlib_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"reimpl\[plot\]"):
        plot.plot_ewa()


def test_optimizer_paths_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "optimizers.png"
    fig = plot.plot_optimizer_paths(steps=20, path=out)
    assert _is_png(out)
    titles = [ax.get_title().split(":")[0] for ax in fig.axes if ax.get_title()]
    assert titles == list(plot.optimizer_zoo())


def test_optimizer_zoo_covers_reimpl_optim() -> None:
    import reimpl.optim

    classes = {
        n
        for n in reimpl.optim.__all__
        if n != "Optimizer"
        and isinstance(getattr(reimpl.optim, n), type)
        and issubclass(getattr(reimpl.optim, n), torch.optim.Optimizer)
    }
    assert {name.split(" ")[0] for name in plot.optimizer_zoo()} == classes


@pytest.mark.parametrize("name", list(plot.optimizer_zoo()))
def test_optimizer_paths_are_torchs(name: str) -> None:
    """The picture shows what torch's optimizer does on the same problem (the oracle)."""
    ours = plot.optimizer_path(plot.optimizer_zoo()[name], steps=30)
    theirs = plot.optimizer_path(plot.optimizer_zoo(torch.optim)[name], steps=30)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
