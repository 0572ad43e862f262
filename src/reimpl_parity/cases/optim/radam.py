"""Parity rows for RAdam (the rows of :mod:`reimpl_parity.cases.optim`, built the same way).

Three flavours: every option on the per-tensor and multi-tensor paths (bit-identical to
torch), ``fused=True`` (reimpl only: the multi-tensor form against torch's per-tensor
loop, so equal up to rounding) and ``capturable=True`` (CUDA only, as torch refuses it on
the CPU).
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st

from reimpl.optim.radam import RAdam
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
from reimpl_parity.compare import EXACT

# beta2 = 0.5 keeps rho_inf = 3 (never rectified), 0.9 rectifies from step 6, 0.999 from
# step 5; 0.0 is the degenerate rho_inf = 1.
_betas = st.tuples(
    st.sampled_from([0.0, 0.5, 0.9, 0.999]), st.sampled_from([0.0, 0.5, 0.9, 0.999, 0.999999])
)


def _radam_kwargs(fused: bool) -> KwargsFor:
    def make(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
        s: dict[str, st.SearchStrategy[Any]] = {
            "lr": _lrs,
            "betas": _betas,
            "eps": st.sampled_from([1e-8, 1e-12, 1e-3]),
            "weight_decay": _decays,
            "decoupled_weight_decay": st.booleans(),
            "maximize": st.booleans(),
        }
        return path_kwargs(s, fused)

    return make


_EXACT = dict.fromkeys(ALL_DTYPES, EXACT)
_EXACT_WHY = "exact: the same operations in the same order as torch's RAdam, on every path"

_radam_groups = _groups(
    lr=_lrs, weight_decay=_decays, decoupled_weight_decay=st.booleans(), maximize=st.booleans()
)

# torch reads a Tensor lr on every path (as a 0-dim tensor), capturable or not;
# capturable: step counters and the rectification stay on the GPU
ROWS: list[OptimRow] = standard_rows(
    "RAdam",
    RAdam,
    torch.optim.RAdam,
    _radam_kwargs,
    _radam_groups,
    tol=_EXACT,
    why=_EXACT_WHY,
    fused_why=(
        "fused (reimpl only): the multi-tensor form's operation order (the step folded "
        "into 1 / ((sqrt(v) + eps) / scale)), against torch's per-tensor loop"
    ),
)

__all__ = ["ROWS"]
