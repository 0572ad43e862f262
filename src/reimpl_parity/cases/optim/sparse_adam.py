"""Parity rows for SparseAdam (``reimpl.optim.sparse_adam``), in the format of the other rows.

torch's SparseAdam has one path (no foreach, differentiable, capturable or fused) and
takes sparse gradients only, so there is one row: sparse COO gradients on a random half
of the rows with one row listed twice (coalescing matters), every option torch's
SparseAdam has (``lr`` also as a Tensor, ``betas``, ``eps``, ``maximize``), checkpoints
swapped mid-run both ways. Ours repeats torch's operations in torch's order on the same
sparse ops, so the trajectories agree bit for bit, 16-bit params included (torch runs
them in their own dtype too).
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st

from reimpl.optim.sparse_adam import SparseAdam
from reimpl_parity.cases.optim._machinery import REAL_DTYPES, KwargsFor, OptimRow, _groups
from reimpl_parity.strategies import optional_kwargs

# SparseAdam refuses lr = 0 and eps = 0 (strictly positive, unlike Adam)
_lrs = st.sampled_from([1e-3, 1e-2, 0.1, 1.0])


def _sparse_adam_kwargs() -> KwargsFor:
    def make(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
        # beta = 0: the moments are the last gradient alone; 0.999999: the bias
        # corrections 1 - beta^t ~ 1e-6 t scale the step for the whole trajectory
        b = st.sampled_from([0.0, 0.5, 0.9, 0.999, 0.999999])
        return optional_kwargs(
            {
                "lr": _lrs,
                "betas": st.tuples(b, b),
                "eps": st.sampled_from([1e-8, 1e-12, 1e-3]),
                "maximize": st.booleans(),
            }
        )

    return make


_sparse_adam_groups = _groups(
    lr=_lrs,
    betas=st.sampled_from([(0.9, 0.999), (0.5, 0.9)]),
    eps=st.sampled_from([1e-8, 1e-3]),
    maximize=st.booleans(),
)

ROWS: list[OptimRow] = [
    OptimRow(
        "SparseAdam",
        SparseAdam,
        torch.optim.SparseAdam,
        _sparse_adam_kwargs(),
        _sparse_adam_groups,
        dtypes=REAL_DTYPES,
        tensor_hparams=("lr",),
        sparse=True,
    ),
]

__all__ = ["ROWS"]
