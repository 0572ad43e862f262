"""Parity rows for ASGD (``reimpl.optim.asgd``), in the format of the other rows.

The plain row runs every option torch's ASGD has (foreach None/False/True, maximize,
differentiable, a Tensor lr) against torch on the same path; the per-tensor and
multi-tensor forms repeat torch's operations in torch's order, so on the CPU they agree
bit for bit. ``fused=True`` is reimpl's only (torch's ASGD has no such keyword): its row
compares it with torch's default path. ``capturable=True`` is CUDA only (torch refuses it
on the CPU).
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st

from reimpl.optim.asgd import ASGD
from reimpl_parity.cases.optim._machinery import (
    _FUSED_TOL,
    KwargsFor,
    OptimRow,
    _decays,
    _groups,
    _lrs,
    path_kwargs,
    standard_rows,
)


def _asgd_kwargs(fused: bool) -> KwargsFor:
    def make(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
        # t0 small enough that the averaging (mu < 1) starts within a trajectory's 20-24
        # steps, and the default 1e6 where ax only copies the params; lambd = 0 keeps eta
        # at lr; alpha = 0 as well
        s: dict[str, st.SearchStrategy[Any]] = {
            "lr": _lrs,
            "lambd": st.sampled_from([0.0, 1e-4, 1e-2, 0.5]),
            "alpha": st.sampled_from([0.0, 0.5, 0.75, 1.0]),
            "t0": st.sampled_from([0.0, 3.0, 10.5, 1e6]),
            "weight_decay": _decays,
            "maximize": st.booleans(),
        }
        return path_kwargs(s, fused)

    return make


_asgd_groups = _groups(
    lr=_lrs,
    weight_decay=_decays,
    lambd=st.sampled_from([1e-4, 1e-2]),
    t0=st.sampled_from([2.0, 1e6]),
)

# The fused fallback is torch's *multi-tensor* algorithm, which differs from its per-tensor
# loop (the default on the CPU) beyond operation order: eta is computed in the step
# counters' float32 arithmetic, not in double and rounded once, so eta (float32 state, also
# under float64 params) is an ulp or two of float32 apart, and the params drift by that
# share of each step; and with mu = 1 the average is ax + (theta - ax), not a copy of theta.
# The differences are float32 roundings of eta, so float64 params get float32's tolerance.
_ASGD_FUSED_TOL = {
    torch.float64: _FUSED_TOL[torch.float32],
    torch.float32: _FUSED_TOL[torch.float32],
}

# capturable: step counters, eta and mu stay on the GPU
ROWS: list[OptimRow] = standard_rows(
    "ASGD",
    ASGD,
    torch.optim.ASGD,
    _asgd_kwargs,
    _asgd_groups,
    fused_tol=_ASGD_FUSED_TOL,
    fused_why=(
        "fused (reimpl only): torch's multi-tensor algorithm (eta in float32 tensor "
        "arithmetic, the average never a plain copy), against torch's per-tensor loop; "
        "eta is float32 state even for float64 params, hence float32's tolerance"
    ),
)

__all__ = ["ROWS"]
