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
        if not fused:
            s["foreach"] = _paths
            s["differentiable"] = st.booleans()
        return _always_fused(optional_kwargs(s), fused)

    return make


_adamax_groups = _groups(
    lr=_lrs,
    weight_decay=_decays,
    betas=st.sampled_from([(0.9, 0.999), (0.5, 0.9)]),
    eps=st.sampled_from([1e-8, 1e-3]),
)

ROWS: list[OptimRow] = [
    OptimRow(
        "Adamax",
        Adamax,
        torch.optim.Adamax,
        _adamax_kwargs(False),
        _adamax_groups,
        tensor_hparams=("lr",),
    ),
    OptimRow(
        "Adamax-fused",
        Adamax,
        torch_unfused(torch.optim.Adamax),  # type: ignore[arg-type]
        _adamax_kwargs(True),
        _adamax_groups,
        # torch's 16-bit loop rounds each intermediate to 16 bits; the fused fallback
        # computes in float32 and rounds once, so 16-bit rows would compare two algorithms
        dtypes=(torch.float64, torch.float32),
        tol=_FUSED_TOL,
        why=(
            "fused (reimpl only): the multi-tensor form, against torch's per-tensor loop; "
            "the same arithmetic on the CPU today, but a fused kernel may order it differently"
        ),
        contiguous=True,
        large_grads=False,
    ),
    # capturable: step counters and bias corrections stay on the GPU (CUDA only; on the
    # CPU torch refuses capturable=True at the first step)
    OptimRow(
        "Adamax-capturable",
        Adamax,
        torch.optim.Adamax,
        _with(_adamax_kwargs(False), capturable=True),
        _adamax_groups,
        dtypes=REAL_DTYPES,
        devices=("cuda",),
        tensor_hparams=("lr",),
    ),
]

__all__ = ["ROWS"]
