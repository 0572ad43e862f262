"""Parity rows for Muon (``reimpl.optim.muon``), in the format of the other rows.

torch's Muon has one path (no foreach, maximize, differentiable, capturable or fused
keyword), and reimpl's adds none (the Newton-Schulz iteration is matrix products per
param: a fused kernel would be the same torch ops), so there is one row and no ``-fused``
or ``-capturable`` row. It draws every option torch's Muon has (``lr`` also as a Tensor,
``weight_decay``, ``momentum``, ``nesterov``, ``ns_coefficients``, ``eps``, ``ns_steps``,
``adjust_lr_fn``), per-group overrides and mid-run checkpoint swaps both ways.

Muon takes matrices only, so the params are redrawn as 2-D (sides 1 to 6, rarely 0:
square, tall, wide, empty; any layout); one draw in twenty keeps the table's general
shape, where both refuse a param that is not 2-D (``ValueError``). Complex params are
refused by both at the first step (``RuntimeError``), which the complex dtypes check.
Ours runs torch's operations in torch's order (the iteration in bfloat16 for every
dtype), so trajectories agree bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from hypothesis import strategies as st

from reimpl.optim.muon import NS_COEFFICIENTS, Muon
from reimpl_parity.cases.optim._machinery import (
    ALL_DTYPES,
    Draw,
    KwargsFor,
    OptimRow,
    _decays,
    _groups,
    _lrs,
)
from reimpl_parity.harness import Case
from reimpl_parity.strategies import Call, TensorSpec, optional_kwargs

# momentum 0: the buffer is the last gradient; 0.999: it moves slowly for the whole run
_momenta = st.sampled_from([0.0, 0.5, 0.9, 0.95, 0.999])
# the reference quintic, a gentler one that converges, and one with c = 0 (a cubic)
_coefficients = st.sampled_from([NS_COEFFICIENTS, (2.0, -1.5, 0.5), (1.5, -0.5, 0.0)])
# 0 steps: the scaled bfloat16 momentum itself; 100: refused at the step (ValueError)
_ns_steps = st.sampled_from([5, 5, 5, 5, 0, 1, 1, 3, 3, 8, 8, 100])
_adjust = st.sampled_from([None, "original", "match_rms_adamw"])
_epss = st.sampled_from([1e-7, 1e-12, 1e-2])


def _muon_kwargs() -> KwargsFor:
    def make(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
        return optional_kwargs(
            {
                "lr": _lrs,
                "weight_decay": _decays,
                "momentum": _momenta,
                "nesterov": st.booleans(),
                "ns_coefficients": _coefficients,
                "eps": _epss,
                "ns_steps": _ns_steps,
                "adjust_lr_fn": _adjust,
            }
        )

    return make


_muon_groups = _groups(
    lr=_lrs,
    weight_decay=_decays,
    momentum=_momenta,
    nesterov=st.booleans(),
    ns_steps=st.sampled_from([5, 1]),
    adjust_lr_fn=_adjust,
)

#: hypothesis starts from the simplest draw (the first): matrices first
_keep_shape = st.sampled_from([False] * 19 + [True])
# an empty side now and then; rarely a column count of 0, where "original"'s
# sqrt(max(1, rows / cols)) divides by zero (ZeroDivisionError, both)
_rows = st.sampled_from([*range(1, 7), *range(1, 7), 0])
_cols = st.sampled_from([*range(1, 7)] * 5 + [0])


def _as_matrices(
    inputs: Callable[[torch.dtype], st.SearchStrategy[Call]],
) -> Callable[[torch.dtype], st.SearchStrategy[Call]]:
    """The table's calls with each param redrawn as a matrix (one call in twenty as drawn)."""

    @st.composite
    def draw_call(draw: Draw, dtype: torch.dtype) -> Call:
        call = draw(inputs(dtype))
        if draw(_keep_shape):
            return call
        problem, *specs = call.args

        def matrix(spec: TensorSpec) -> TensorSpec:
            return dataclasses.replace(spec, shape=(draw(_rows), draw(_cols)))

        return Call((problem, *map(matrix, specs)), call.kwargs, call.seed)

    return draw_call


@dataclasses.dataclass(frozen=True)
class MatrixRow(OptimRow):
    """A row whose params are matrices (Muon's domain)."""

    def case(self) -> Case:
        case = super().case()
        return dataclasses.replace(case, inputs=_as_matrices(case.inputs))


# the same operations in the same order as torch's Muon, on every dtype
_EXACT = dict.fromkeys(ALL_DTYPES, (0.0, 0.0))
_EXACT_WHY = "exact: the same operations in the same order as torch's Muon"

ROWS: list[OptimRow] = [
    MatrixRow(
        "Muon",
        Muon,
        torch.optim.Muon,
        _muon_kwargs(),
        _muon_groups,
        tol=_EXACT,
        why=_EXACT_WHY,
        tensor_hparams=("lr",),
    ),
]

__all__ = ["ROWS"]
