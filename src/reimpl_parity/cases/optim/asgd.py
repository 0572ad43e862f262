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
        if not fused:
            s["foreach"] = _paths
            s["differentiable"] = st.booleans()
        return _always_fused(optional_kwargs(s), fused)

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

ROWS: list[OptimRow] = [
    OptimRow(
        "ASGD",
        ASGD,
        torch.optim.ASGD,
        _asgd_kwargs(False),
        _asgd_groups,
        tensor_hparams=("lr",),
    ),
    OptimRow(
        "ASGD-fused",
        ASGD,
        torch_unfused(torch.optim.ASGD),  # type: ignore[arg-type]
        _asgd_kwargs(True),
        _asgd_groups,
        # torch's 16-bit loop rounds each intermediate to 16 bits; the fused fallback
        # computes in float32 and rounds once, so 16-bit rows would compare two algorithms
        dtypes=(torch.float64, torch.float32),
        tol=_ASGD_FUSED_TOL,
        why=(
            "fused (reimpl only): torch's multi-tensor algorithm (eta in float32 tensor "
            "arithmetic, the average never a plain copy), against torch's per-tensor loop; "
            "eta is float32 state even for float64 params, hence float32's tolerance"
        ),
        contiguous=True,
        large_grads=False,
    ),
    # capturable: step counters, eta and mu stay on the GPU (CUDA only; on the CPU torch
    # refuses capturable=True at the first step)
    OptimRow(
        "ASGD-capturable",
        ASGD,
        torch.optim.ASGD,
        _with(_asgd_kwargs(False), capturable=True),
        _asgd_groups,
        dtypes=REAL_DTYPES,
        devices=("cuda",),
        tensor_hparams=("lr",),
    ),
]

__all__ = ["ROWS"]
