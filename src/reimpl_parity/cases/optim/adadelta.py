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
    _FUSED_TOL,
    ALL_DTYPES,
    REAL_DTYPES,
    KwargsFor,
    OptimRow,
    _always_fused,
    _decays,
    _groups,
    _lrs,
    _paths,
    _with,
    torch_unfused,
)
from reimpl_parity.strategies import optional_kwargs

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
        if not fused:
            s["foreach"] = _paths
            s["differentiable"] = st.booleans()
        return _always_fused(optional_kwargs(s), fused)

    return make


# every path runs torch's elementary ops in torch's order (complex params included: the
# per-tensor loop adds the update as complex numbers, as torch does), so bit for bit
_EXACT = dict.fromkeys(ALL_DTYPES, (0.0, 0.0))
_EXACT_WHY = "exact: the same operations in the same order as torch's Adadelta"

_adadelta_groups = _groups(lr=_lrs, rho=st.sampled_from([0.5, 0.9]), weight_decay=_decays)

ROWS: list[OptimRow] = [
    OptimRow(
        "Adadelta",
        Adadelta,
        torch.optim.Adadelta,
        _adadelta_kwargs(False),
        _adadelta_groups,
        tol=_EXACT,
        why=_EXACT_WHY,
        tensor_hparams=("lr",),
    ),
    OptimRow(
        "Adadelta-fused",
        Adadelta,
        torch_unfused(torch.optim.Adadelta),  # type: ignore[arg-type]
        _adadelta_kwargs(True),
        _adadelta_groups,
        dtypes=(torch.float64, torch.float32),  # torch's 16-bit loop is not float32 inside
        tol=_FUSED_TOL,
        why=(
            "fused (reimpl only, no kernel yet: the widened multi-tensor form) against "
            "torch's per-tensor loop; the foreach ops may round differently from the loop"
        ),
        contiguous=True,
        large_grads=False,
    ),
    # capturable: the step counters stay on the GPU (CUDA only; on the CPU torch refuses
    # capturable=True at the first step)
    OptimRow(
        "Adadelta-capturable",
        Adadelta,
        torch.optim.Adadelta,
        _with(_adadelta_kwargs(False), capturable=True),
        _adadelta_groups,
        dtypes=REAL_DTYPES,
        devices=("cuda",),
        tensor_hparams=("lr",),
    ),
]

__all__ = ["ROWS"]
