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
    KwargsFor,
    OptimRow,
    _decays,
    _groups,
    _lrs,
    path_kwargs,
    standard_rows,
)


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
        return path_kwargs(s, fused)

    return make


_nadam_groups = _groups(
    lr=_lrs,
    weight_decay=_decays,
    momentum_decay=st.sampled_from([0.0, 4e-3]),
    decoupled_weight_decay=st.booleans(),
)

# capturable: step counters, mu_product and the step sizes stay on the GPU
ROWS: list[OptimRow] = standard_rows(
    "NAdam",
    NAdam,
    torch.optim.NAdam,
    _nadam_kwargs,
    _nadam_groups,
    fused_why=(
        "fused (reimpl only): the multi-tensor form's operation order (one sqrt, then "
        "a division by sqrt(1 - beta2^t)), against torch's per-tensor loop (sqrt of "
        "v / (1 - beta2^t))"
    ),
)

__all__ = ["ROWS"]
