"""Parity rows for NAdam (see :mod:`reimpl_parity.cases.optim` for the table's machinery).

Three rows: every option against torch on its own paths (bit for bit), ``fused=True``
(reimpl only) against torch's default path, and ``capturable=True`` (CUDA only: torch
refuses it on the CPU).
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st

from reimpl.optim.nadam import NAdam
from reimpl_parity.cases.optim._machinery import (
    _FUSED_TOL,
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


def _nadam_kwargs(fused: bool) -> KwargsFor:
    def make(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
        b = st.sampled_from([0.0, 0.5, 0.9, 0.999])
        s: dict[str, st.SearchStrategy[Any]] = {
            "lr": _lrs,
            "betas": st.tuples(b, b),
            "eps": st.sampled_from([1e-8, 1e-12, 1e-3]),
            "weight_decay": _decays,
            "momentum_decay": st.sampled_from([0.0, 4e-3, 0.1, 1.0]),
            "decoupled_weight_decay": st.booleans(),
            "maximize": st.booleans(),
        }
        if not fused:
            s["foreach"] = _paths
            s["differentiable"] = st.booleans()
        return _always_fused(optional_kwargs(s), fused)

    return make


_nadam_groups = _groups(
    lr=_lrs,
    weight_decay=_decays,
    momentum_decay=st.sampled_from([0.0, 4e-3]),
    decoupled_weight_decay=st.booleans(),
)

ROWS: list[OptimRow] = [
    OptimRow(
        "NAdam",
        NAdam,
        torch.optim.NAdam,
        _nadam_kwargs(False),
        _nadam_groups,
        tensor_hparams=("lr",),
    ),
    OptimRow(
        "NAdam-fused",
        NAdam,
        torch_unfused(torch.optim.NAdam),  # type: ignore[arg-type]
        _nadam_kwargs(True),
        _nadam_groups,
        # torch's 16-bit per-tensor loop rounds after every op, the fused path once
        dtypes=(torch.float64, torch.float32),
        tol=_FUSED_TOL,
        why=(
            "fused (reimpl only): the multi-tensor form's operation order (one sqrt, then "
            "a division by sqrt(1 - beta2^t)), against torch's per-tensor loop (sqrt of "
            "v / (1 - beta2^t))"
        ),
        contiguous=True,
        large_grads=False,
    ),
    # capturable: step counters, mu_product and the step sizes stay on the GPU
    OptimRow(
        "NAdam-capturable",
        NAdam,
        torch.optim.NAdam,
        _with(_nadam_kwargs(False), capturable=True),
        _nadam_groups,
        dtypes=REAL_DTYPES,
        devices=("cuda",),
        tensor_hparams=("lr",),
    ),
]

__all__ = ["ROWS"]
