"""Pictures of LR schedules and of exponential weighted averages (needs matplotlib).

matplotlib is optional (``pip install reimpl[plot]``) and imported only when a function
here is called. Each function returns the matplotlib ``Figure`` and, given ``path``,
saves it there (e.g. a PNG).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from reimpl.optim.ewa import exponential_weighted_average
from reimpl.optim.lr_scheduler import ExponentialLR, MultiStepLR, StepLR

__all__ = [
    "demo_temperatures",
    "lr_trace",
    "plot_ewa",
    "plot_lr_schedules",
    "seed_schedules",
]

SchedulerFactory = Callable[[Optimizer], Any]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            "reimpl.plot needs matplotlib: pip install 'reimpl[plot]' (or matplotlib)"
        ) from e
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # no display needed; a user's explicit backend choice wins
    import matplotlib.pyplot as plt

    return plt


class _LRProbe(Optimizer):
    """An optimizer with no parameters to update: only its lr matters."""

    def __init__(self, lr: float) -> None:
        super().__init__([torch.zeros(1, requires_grad=True)], {"lr": lr})

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        return None


def lr_trace(make_scheduler: SchedulerFactory, epochs: int, lr: float = 0.1) -> list[float]:
    """The lr used in each of ``epochs`` epochs (epoch 0 first) under one scheduler."""
    opt = _LRProbe(lr)
    sched = make_scheduler(opt)
    trace = []
    for _ in range(epochs):
        trace.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        sched.step()
    return trace


def seed_schedules() -> dict[str, SchedulerFactory]:
    """The seed's three: StepLR, MultiStepLR and ExponentialLR."""
    return {
        "StepLR(step_size=50, gamma=0.5)": lambda o: StepLR(o, step_size=50, gamma=0.5),
        "MultiStepLR([60, 120, 160], gamma=0.2)": lambda o: MultiStepLR(
            o, milestones=[60, 120, 160], gamma=0.2
        ),
        "ExponentialLR(gamma=0.98)": lambda o: ExponentialLR(o, gamma=0.98),
    }


def _finish(fig: Any, path: str | os.PathLike[str] | None) -> Any:
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


def plot_lr_schedules(
    schedules: Mapping[str, SchedulerFactory] | None = None,
    *,
    epochs: int = 200,
    lr: float = 0.1,
    path: str | os.PathLike[str] | None = None,
) -> Any:
    """Draw lr against epoch for each named scheduler factory (default: the seed's three)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, make in (schedules or seed_schedules()).items():
        ax.plot(range(epochs), lr_trace(make, epochs, lr), label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning-rate schedules")
    ax.legend()
    return _finish(fig, path)


def demo_temperatures(days: int = 30, seed: int = 0) -> Tensor:
    """A noisy daily-temperature series (°C): a slow seasonal swing plus noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(days, dtype=torch.float64)
    season = 12 + 6 * torch.sin(2 * math.pi * t / 60)
    return season + 3 * torch.randn(days, generator=g, dtype=torch.float64)


def plot_ewa(
    series: Tensor | Sequence[float] | None = None,
    betas: Iterable[float] = (0.5, 0.9),
    *,
    bias_correction: bool = False,
    path: str | os.PathLike[str] | None = None,
) -> Any:
    """Draw a series (default: 30 days of temperatures) and its EWA for each ``β``."""
    plt = _pyplot()
    y = demo_temperatures() if series is None else series
    y = y if isinstance(y, Tensor) else torch.tensor(y, dtype=torch.float64)
    days = range(1, y.numel() + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(days, y.tolist(), "o", color="0.6", label="observed")
    for beta in betas:
        s = exponential_weighted_average(y, beta, bias_correction=bias_correction)
        ax.plot(days, s.tolist(), label=f"EWA β = {beta}")
    ax.set_xlabel("day")
    ax.set_ylabel("temperature")
    ax.set_title("Exponential weighted average")
    ax.legend()
    return _finish(fig, path)
