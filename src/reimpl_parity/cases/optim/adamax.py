"""Parity rows for Adamax (``reimpl.optim.adamax``), in the format of the other rows.

The plain row runs every option torch's Adamax has (foreach None/False/True, maximize,
differentiable, a Tensor lr) against torch on the same path; the per-tensor and
multi-tensor forms repeat torch's operations in torch's order, so on the CPU they agree
bit for bit. ``fused=True`` is reimpl's only (torch's Adamax has no such keyword): its
row compares it with torch's default path.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st

from reimpl.optim.adamax import Adamax
from reimpl_parity.cases.optim._machinery import (
    KwargsFor,
    OptimRow,
    _decays,
    _groups,
    _lrs,
    path_kwargs,
    standard_rows,
)


def _adamax_kwargs(fused: bool) -> KwargsFor:
    def make(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
        # beta2 = 0: u_t is |g_t| + eps alone; beta1 = 0.999999: the bias correction
        # 1 - beta1^t ~ 1e-6 t divides the step size for the whole trajectory
        b = st.sampled_from([0.0, 0.5, 0.9, 0.999, 0.999999])
        s: dict[str, st.SearchStrategy[Any]] = {
            "lr": _lrs,
            "betas": st.tuples(b, b),
            "eps": st.sampled_from([1e-8, 1e-12, 1e-3]),
            "weight_decay": _decays,
            "maximize": st.booleans(),
        }
        return path_kwargs(s, fused)

    return make


_adamax_groups = _groups(
    lr=_lrs,
    weight_decay=_decays,
    betas=st.sampled_from([(0.9, 0.999), (0.5, 0.9)]),
    eps=st.sampled_from([1e-8, 1e-3]),
)

# capturable: step counters and bias corrections stay on the GPU
ROWS: list[OptimRow] = standard_rows(
    "Adamax",
    Adamax,
    torch.optim.Adamax,
    _adamax_kwargs,
    _adamax_groups,
    fused_why=(
        "fused (reimpl only): the multi-tensor form, against torch's per-tensor loop; "
        "the same arithmetic on the CPU today, but a fused kernel may order it differently"
    ),
)

__all__ = ["ROWS"]
