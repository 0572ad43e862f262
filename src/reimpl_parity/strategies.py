"""Hypothesis strategies shared by every parity table (the one strategies module).

Tensors are drawn as a *recipe* (shape, seed, value regime, memory layout), and made
on demand with :meth:`TensorSpec.make`. Both sides of a comparison get freshly made,
identical tensors, and a failing example prints as a short, reproducible recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

FLOAT_DTYPES: tuple[torch.dtype, ...] = (
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
)
#: value regimes for real-valued tensors; "special" sprinkles nan/±inf
REGIMES = ("normal", "large", "tiny", "special")
LAYOUTS = ("contiguous", "transposed", "strided")


@dataclass(frozen=True)
class TensorSpec:
    """How to make one tensor. ``kind``: ``real`` (regime-driven floats), ``unit`` ([0, 1]
    incl. exact 0 and 1), ``positive``, ``int`` (uniform in [low, high)), ``fill`` (constant)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    seed: int
    kind: str = "real"
    regime: str = "normal"
    layout: str = "contiguous"
    requires_grad: bool = False
    low: float = 0
    high: float = 1

    def values(self) -> Tensor:
        g = torch.Generator().manual_seed(self.seed)
        n = 1
        for s in self.shape:
            n *= s
        if self.kind == "int":
            flat = torch.randint(int(self.low), int(self.high), (n,), generator=g)
            return flat.reshape(self.shape).to(self.dtype)
        if self.kind == "fill":
            return torch.full(self.shape, float(self.low), dtype=torch.float64)
        if self.kind == "unit":
            v = torch.rand(n, generator=g, dtype=torch.float64)
            pick = torch.rand(n, generator=g, dtype=torch.float64)
            v = torch.where(pick < 0.05, 0.0, torch.where(pick > 0.95, 1.0, v))
        elif self.kind == "positive":
            v = torch.rand(n, generator=g, dtype=torch.float64) * (self.high - self.low) + self.low
        else:
            v = torch.randn(n, generator=g, dtype=torch.float64)
            if self.regime == "large":
                v = v * 1e4
            elif self.regime == "tiny":
                v = v * 1e-4
            elif self.regime == "special" and n:
                pick = torch.randint(0, 8, (n,), generator=g)
                v = torch.where(pick == 0, torch.nan, v)
                v = torch.where(pick == 1, torch.inf, v)
                v = torch.where(pick == 2, -torch.inf, v)
        return v.reshape(self.shape)

    def make(self, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
        """(leaf, view): ``view`` is what the call receives, ``leaf`` holds ``.grad``."""
        v = self.values().to(self.dtype)
        if self.layout == "transposed" and len(self.shape) >= 2:
            leaf = v.transpose(-1, -2).contiguous().to(device)
            view_of = lambda t: t.transpose(-1, -2)  # noqa: E731
        elif self.layout == "strided" and len(self.shape) >= 1:
            leaf = torch.zeros(
                *self.shape[:-1], 2 * self.shape[-1], dtype=self.dtype, device=device
            )
            leaf[..., ::2] = v.to(device)
            view_of = lambda t: t[..., ::2]  # noqa: E731
        else:
            leaf = v.to(device).clone()
            view_of = lambda t: t  # noqa: E731
        if self.requires_grad:
            leaf.requires_grad_(True)
        return leaf, view_of(leaf)

    def __repr__(self) -> str:
        dt = str(self.dtype).replace("torch.", "")
        extra = "" if self.layout == "contiguous" else f", {self.layout}"
        what = self.kind if self.kind != "real" else self.regime
        grad = ", grad" if self.requires_grad else ""
        return f"T({list(self.shape)}, {dt}, {what}{extra}{grad}, seed={self.seed})"


@dataclass
class Call:
    """Arguments for one call; tensors as :class:`TensorSpec` recipes."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # for the upstream gradient

    def make(
        self, device: str | torch.device
    ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Tensor]]:
        leaves: dict[str, Tensor] = {}

        def one(name: str, a: Any) -> Any:
            if isinstance(a, TensorSpec):
                leaf, view = a.make(device)
                if a.requires_grad:
                    leaves[name] = leaf
                return view
            return a

        args = tuple(one(f"arg{i}", a) for i, a in enumerate(self.args))
        kwargs = {k: one(k, v) for k, v in self.kwargs.items()}
        return args, kwargs, leaves

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return "(" + ", ".join(parts) + ")"


def shapes(
    min_dims: int = 0, max_dims: int = 4, min_side: int = 0, max_side: int = 5
) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes incl. empty (a 0 side) and size-1 sides."""
    return st.lists(st.integers(min_side, max_side), min_size=min_dims, max_size=max_dims).map(
        tuple
    )


seeds = st.integers(0, 2**31 - 1)


@st.composite
def tensors(
    draw: Callable[[st.SearchStrategy[Any]], Any],
    shape: tuple[int, ...],
    dtype: torch.dtype,
    *,
    kind: str = "real",
    regimes: tuple[str, ...] = REGIMES,
    requires_grad: bool = False,
    low: float = 0,
    high: float = 1,
    layouts: tuple[str, ...] = LAYOUTS,
) -> TensorSpec:
    usable = [
        lay
        for lay in layouts
        if lay == "contiguous"
        or (lay == "transposed" and len(shape) >= 2)
        or (lay == "strided" and len(shape) >= 1)
    ]
    return TensorSpec(
        shape=tuple(shape),
        dtype=dtype,
        seed=draw(seeds),
        kind=kind,
        regime=draw(st.sampled_from(regimes)) if kind == "real" else "normal",
        layout=draw(st.sampled_from(usable)),
        requires_grad=requires_grad,
        low=low,
        high=high,
    )


@st.composite
def optional_kwargs(
    draw: Callable[[st.SearchStrategy[Any]], Any], strategies: Mapping[str, st.SearchStrategy[Any]]
) -> dict[str, Any]:
    """Each keyword present or left out (so torch's default is exercised)."""
    out = {}
    for name, strat in strategies.items():
        if draw(st.booleans()):
            out[name] = draw(strat)
    return out


reductions = st.sampled_from(["mean", "sum", "none"])
