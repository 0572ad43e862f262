"""Parity rows for Rprop (``reimpl.optim.rprop``): whole trajectories against
``torch.optim.Rprop``, built like the other optimizer rows.

The plain row draws every option torch's Rprop has (foreach None/False/True, maximize,
differentiable, a Tensor lr, any ``etas`` and ``step_sizes``) against torch on the same
path, bit for bit; ``-fused`` holds reimpl's ``fused=True`` (torch has none) to torch's
default path; ``-capturable`` runs on CUDA only.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st

from reimpl.optim.rprop import Rprop
from reimpl_parity.cases.optim._machinery import (
    ALL_DTYPES,
    KwargsFor,
    OptimRow,
    _groups,
    _lrs,
    path_kwargs,
    standard_rows,
)

# (etaminus, etaplus): the paper's (0.5, 1.2), a near-1 pair that barely adapts, and
# steep ones that hit the step-size bounds within a few steps
_etas = st.tuples(st.sampled_from([0.1, 0.5, 0.9, 0.999]), st.sampled_from([1.001, 1.2, 2.0, 10.0]))
# (min, max): torch's default, no bounds at all, a narrow band, and min == max (the step
# size is pinned); torch does not check the pair, so min > max (clamp gives max) too
_step_sizes = st.sampled_from(
    [(1e-6, 50.0), (0.0, float("inf")), (1e-3, 1e-2), (0.1, 0.1), (1e-2, 1e-3)]
)


def _rprop_kwargs(fused: bool) -> KwargsFor:
    def make(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
        s: dict[str, st.SearchStrategy[Any]] = {
            "lr": _lrs,  # the initial step size; 0 starts every step size at the minimum
            "etas": _etas,
            "step_sizes": _step_sizes,
            "maximize": st.booleans(),
        }
        return path_kwargs(s, fused)

    return make


# every path runs torch's elementary ops in torch's order (complex params as pairs of
# reals, as torch does), so bit for bit on every dtype
_EXACT = dict.fromkeys(ALL_DTYPES, (0.0, 0.0))
_EXACT_WHY = "exact: the same operations in the same order as torch's Rprop"

_rprop_groups = _groups(lr=_lrs, etas=_etas, step_sizes=_step_sizes)

# fused: without a kernel the fused path is the multi-tensor form, whose every op rounds
# as the loop's (a product, a sign, an exact factor, a clamp, one addcmul): bit for bit.
# A one-pass kernel added later loosens this to _FUSED_TOL with its own why.
# capturable: step counters stay on the GPU and the sign tests use where, not masked writes
ROWS: list[OptimRow] = standard_rows(
    "Rprop",
    Rprop,
    torch.optim.Rprop,
    _rprop_kwargs,
    _rprop_groups,
    tol=_EXACT,
    why=_EXACT_WHY,
    fused_tol=_EXACT,
    fused_why="exact: fused=True runs the multi-tensor form, the same ops as torch's loop",
)

__all__ = ["ROWS"]
