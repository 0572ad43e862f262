"""Pictures of LR schedules, exponential weighted averages and optimizer paths (needs
matplotlib).

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

import reimpl.optim
from reimpl.optim.ewa import exponential_weighted_average
from reimpl.optim.lr_scheduler import ExponentialLR, MultiStepLR, StepLR

__all__ = [
    "demo_temperatures",
    "lr_trace",
    "optimizer_path",
    "optimizer_zoo",
    "plot_ewa",
    "plot_lr_schedules",
    "plot_optimizer_paths",
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


# ------------------------------------------------------------------ optimizer paths
OptimizerFactory = Callable[[list[Tensor]], Optimizer]


def valley(w: Tensor) -> Tensor:
    """An ill-conditioned bowl, 20 times steeper across than along: the picture where plain
    gradient descent crawls along the floor and adaptive methods rescale each axis."""
    return 0.1 * w[..., 0] ** 2 + 2 * w[..., 1] ** 2


def optimizer_zoo(optim: Any = reimpl.optim) -> dict[str, OptimizerFactory]:
    """One factory per optimizer in ``optim`` (``reimpl.optim`` or ``torch.optim``), with an
    lr that suits :func:`valley` (defaults elsewhere). SparseAdam gets sparse gradients and
    LBFGS a closure from :func:`optimizer_path`; Muon sees the point as a 1×2 matrix."""
    o = optim
    return {
        "SGD": lambda p: o.SGD(p, lr=0.2),
        "SGD (momentum 0.9)": lambda p: o.SGD(p, lr=0.05, momentum=0.9),
        "Adagrad": lambda p: o.Adagrad(p, lr=1.0),
        "RMSprop": lambda p: o.RMSprop(p, lr=0.1),
        "Adam": lambda p: o.Adam(p, lr=0.3),
        "AdamW": lambda p: o.AdamW(p, lr=0.3),
        "NAdam": lambda p: o.NAdam(p, lr=0.3),
        "RAdam": lambda p: o.RAdam(p, lr=0.5),
        "Adamax": lambda p: o.Adamax(p, lr=0.5),
        "Adadelta": lambda p: o.Adadelta(p, lr=50.0),
        "Rprop": lambda p: o.Rprop(p, lr=0.1),
        "ASGD": lambda p: o.ASGD(p, lr=0.2),
        "Adafactor": lambda p: o.Adafactor(p, lr=0.5),
        "SparseAdam": lambda p: o.SparseAdam(p, lr=0.3),
        "Muon": lambda p: o.Muon(p, lr=0.3),
        "LBFGS": lambda p: o.LBFGS(p, lr=1.0, max_iter=1, history_size=5),
    }


def optimizer_path(
    make: OptimizerFactory,
    steps: int = 60,
    start: tuple[float, float] = (-4.5, 1.5),
    fn: Callable[[Tensor], Tensor] = valley,
) -> Tensor:
    """The ``(steps + 1, 2)`` points an optimizer visits minimizing ``fn`` from ``start``
    (float64; one ``step()`` per point, with a closure, as LBFGS needs)."""
    w = torch.tensor([start], dtype=torch.float64, requires_grad=True)
    opt = make([w])
    sparse = "sparse" in type(opt).__name__.lower()

    def closure() -> float:
        opt.zero_grad()
        loss = fn(w).sum()
        loss.backward()
        if sparse and w.grad is not None:
            w.grad = w.grad.to_sparse()
        return float(loss)

    points = [w.detach().clone()]
    for _ in range(steps):
        opt.step(closure)
        points.append(w.detach().clone())
    return torch.cat(points)


def plot_optimizer_paths(
    optimizers: Mapping[str, OptimizerFactory] | None = None,
    *,
    steps: int = 60,
    path: str | os.PathLike[str] | None = None,
) -> Any:
    """Draw each optimizer's path on :func:`valley` (default: every one in ``reimpl.optim``),
    one small panel each over the function's contours."""
    plt = _pyplot()
    zoo = optimizers or optimizer_zoo()
    cols = 4
    rows = -(-len(zoo) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False)
    xs = torch.linspace(-5, 5, 101, dtype=torch.float64)
    ys = torch.linspace(-2.5, 2.5, 61, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
    levels = [0.05 * 2**k for k in range(10)]
    for ax, (name, make) in zip(axes.flat, zoo.items(), strict=False):
        pts = optimizer_path(make, steps)
        ax.contour(xs.tolist(), ys.tolist(), valley(grid).tolist(), levels, colors="0.8")
        ax.plot(pts[:, 0].tolist(), pts[:, 1].tolist(), ".-", ms=3, lw=1)
        ax.plot([0], [0], "k+")
        ax.set_title(f"{name}: f = {valley(pts[-1]).item():.3g}", fontsize=9)
        ax.set_xlim(-5, 5)
        ax.set_ylim(-2.5, 2.5)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(zoo) :]:
        ax.axis("off")
    fig.suptitle(f"{steps} steps on f(x, y) = 0.1 x² + 2 y² from (-4.5, 1.5)")
    return _finish(fig, path)
