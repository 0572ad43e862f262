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
    _FUSED_TOL,
    ALL_DTYPES,
    REAL_DTYPES,
    KwargsFor,
    OptimRow,
    _decays,
    _groups,
    _lrs,
    _paths,
    _with,
    torch_unfused,
)
from reimpl_parity.compare import EXACT
from reimpl_parity.strategies import optional_kwargs

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
        if not fused:
            s["foreach"] = _paths
            s["differentiable"] = st.booleans()
        kwargs = optional_kwargs(s)
        return kwargs.map(lambda kw: {**kw, "fused": True}) if fused else kwargs

    return make


_EXACT = dict.fromkeys(ALL_DTYPES, EXACT)
_EXACT_WHY = "exact: the same operations in the same order as torch's RAdam, on every path"

_radam_groups = _groups(
    lr=_lrs, weight_decay=_decays, decoupled_weight_decay=st.booleans(), maximize=st.booleans()
)

ROWS: list[OptimRow] = [
    OptimRow(
        "RAdam",
        RAdam,
        torch.optim.RAdam,
        _radam_kwargs(False),
        _radam_groups,
        tol=_EXACT,
        why=_EXACT_WHY,
        # torch reads a Tensor lr on every path (as a 0-dim tensor), capturable or not
        tensor_hparams=("lr",),
    ),
    OptimRow(
        "RAdam-fused",
        RAdam,
        torch_unfused(torch.optim.RAdam),  # type: ignore[arg-type]
        _radam_kwargs(True),
        _radam_groups,
        dtypes=(torch.float64, torch.float32),  # torch's 16-bit loop is not float32 inside
        tol=_FUSED_TOL,
        why=(
            "fused (reimpl only): the multi-tensor form's operation order (the step folded "
            "into 1 / ((sqrt(v) + eps) / scale)), against torch's per-tensor loop"
        ),
        contiguous=True,
        large_grads=False,
    ),
    # capturable: step counters and the rectification stay on the GPU (CUDA only; on the
    # CPU torch refuses capturable=True at the first step)
    OptimRow(
        "RAdam-capturable",
        RAdam,
        torch.optim.RAdam,
        _with(_radam_kwargs(False), capturable=True),
        _radam_groups,
        dtypes=REAL_DTYPES,
        devices=("cuda",),
        tensor_hparams=("lr",),
    ),
]

__all__ = ["ROWS"]
