"""Parity rows for Adadelta: whole trajectories against ``torch.optim.Adadelta``.

Built like the rows of :mod:`reimpl_parity.cases.optim` (same problems, same harness):
the default row draws every option torch has; ``-fused`` holds reimpl's ``fused=True``
(torch has none) to torch's default path; ``-capturable`` runs on CUDA only.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st

from reimpl.optim.adadelta import Adadelta
from reimpl_parity.cases.optim._machinery import (
    ALL_DTYPES,
    KwargsFor,
    OptimRow,
    _decays,
    _groups,
    _lrs,
    path_kwargs,
    standard_rows,
)

# rho = 0 keeps no history (v = g^2, u = delta^2); rho = 1 never updates v and u from
# their zeros, so the step is sqrt(eps) / sqrt(eps) * g: both are legal edges torch takes
_rhos = st.sampled_from([0.0, 0.5, 0.9, 0.95, 1.0])
_epss = st.sampled_from([1e-6, 1e-8, 1e-3])


def _adadelta_kwargs(fused: bool) -> KwargsFor:
    def make(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
        s: dict[str, st.SearchStrategy[Any]] = {
            "lr": _lrs,
            "rho": _rhos,
            "eps": _epss,
            "weight_decay": _decays,
            "maximize": st.booleans(),
        }
        return path_kwargs(s, fused)

    return make


# every path runs torch's elementary ops in torch's order (complex params included: the
# per-tensor loop adds the update as complex numbers, as torch does), so bit for bit
_EXACT = dict.fromkeys(ALL_DTYPES, (0.0, 0.0))
_EXACT_WHY = "exact: the same operations in the same order as torch's Adadelta"

_adadelta_groups = _groups(lr=_lrs, rho=st.sampled_from([0.5, 0.9]), weight_decay=_decays)

# capturable: the step counters stay on the GPU
ROWS: list[OptimRow] = standard_rows(
    "Adadelta",
    Adadelta,
    torch.optim.Adadelta,
    _adadelta_kwargs,
    _adadelta_groups,
    tol=_EXACT,
    why=_EXACT_WHY,
    fused_why=(
        "fused (reimpl only, no kernel yet: the widened multi-tensor form) against "
        "torch's per-tensor loop; the foreach ops may round differently from the loop"
    ),
)

__all__ = ["ROWS"]
