"""Parity rows for Adafactor: whole trajectories against ``torch.optim.Adafactor``.

Built like the rows of :mod:`reimpl_parity.cases.optim` (same problems, same harness):
the default row draws every option torch has (``foreach``, ``maximize``, both epsilons,
the clipping threshold, a Tensor ``lr``); ``-fused`` holds reimpl's ``fused=True`` (torch
has none) to torch's multi-tensor path, which its C kernel computes in three sweeps per
tensor (its reductions in another order: to rounding). No ``-capturable``
row: torch's Adafactor has no ``capturable`` (nor ``differentiable``) option, and its
step reads the step counters and norms on the host, so it has nothing to capture.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st

from reimpl.optim.adafactor import Adafactor
from reimpl_parity.cases.optim._machinery import (
    ALL_DTYPES,
    KwargsFor,
    OptimRow,
    _always_fused,
    _decays,
    _groups,
    _lrs,
    _paths,
)
from reimpl_parity.strategies import optional_kwargs

# beta2_decay = 0 keeps no history (1 - beta2_t = 1: the estimate is this step's g^2);
# eps1 None is the machine epsilon of the params' dtype; eps2 = 0 lets a zero param stay
_beta2_decays = st.sampled_from([-0.8, -0.5, -1.0, 0.0])
_epss = st.tuples(st.sampled_from([None, 1e-30, 1e-8, 1e-3]), st.sampled_from([1e-3, 0.0, 0.1]))
_ds = st.sampled_from([1.0, 2.0, 1e3])


def _adafactor_kwargs(fused: bool) -> KwargsFor:
    def make(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
        s: dict[str, st.SearchStrategy[Any]] = {
            "lr": _lrs,
            "beta2_decay": _beta2_decays,
            "eps": _epss,
            "d": _ds,
            "weight_decay": _decays,
            "maximize": st.booleans(),
        }
        if not fused:
            s["foreach"] = _paths
        return _always_fused(optional_kwargs(s), fused)

    return make


class _TorchAdafactorForeach(torch.optim.Adafactor):
    """torch's Adafactor held to its multi-tensor path (``foreach=True``, also in groups a
    checkpoint brings): torch has no ``fused``, and this is the form reimpl's fused path
    computes (in one C call on CPU, the widened multi-tensor form elsewhere). torch's
    default per-tensor loop adds each step as ``param + size * update`` in one op where
    the multi-tensor form scales the update first; the step size is relative to the
    param's root mean square, so over 20 steps that rounding reaches ~1e-6 of it (4e-3 on
    float32 params ~1e3), more than a per-element tolerance can hold for the small
    elements."""

    def __init__(self, params: Any, **kwargs: Any) -> None:
        kwargs.pop("fused", None)
        super().__init__(params, **{**kwargs, "foreach": True})

    def step(self, closure: Any = None) -> Any:
        for group in self.param_groups:
            group["foreach"] = True
        return super().step(closure)


# every path runs torch's elementary ops in torch's order, so bit for bit; complex params
# are refused by both (RuntimeError), which the complex dtypes check
_EXACT = dict.fromkeys(ALL_DTYPES, (0.0, 0.0))
_EXACT_WHY = "exact: the same operations in the same order as torch's Adafactor"

_adafactor_groups = _groups(
    lr=_lrs, beta2_decay=_beta2_decays, eps=_epss, d=_ds, weight_decay=_decays
)

ROWS: list[OptimRow] = [
    OptimRow(
        "Adafactor",
        Adafactor,
        torch.optim.Adafactor,
        _adafactor_kwargs(False),
        _adafactor_groups,
        tol=_EXACT,
        why=_EXACT_WHY,
        tensor_hparams=("lr",),
    ),
    OptimRow(
        "Adafactor-fused",
        Adafactor,
        _TorchAdafactorForeach,
        _adafactor_kwargs(True),
        _adafactor_groups,
        # 16-bit: the fused path computes in float32, torch's foreach rounds every op
        dtypes=(torch.float64, torch.float32),
        tol={torch.float32: (1.3e-6, 0.5)},
        why=(
            "not bit for bit: the C kernel makes torch's foreach path's elementwise "
            "operations in its order, but sums the norms and the row and column means of "
            "g^2 in double in its own order (torch: in the dtype). float64 holds to the "
            "defaults. float32: each step's size (alpha / clip, from the two norms) then "
            "differs in its last bit, and the step is relative to the param's scale; on "
            "'large' params (1e4, growing to ~1e6 with lr=1) elements that cancel near 0 "
            "keep a few ulps of that scale: measured 0.016 over 600 drawn examples, 0.25 "
            "at worst over 1500 trajectories of 1e4-scale params -- as far as torch's own "
            "loop and foreach paths are from each other (0.016 over 300); at scale ~1 "
            "within 3e-6 (tests/unit/test_adafactor_fused.py holds it to the defaults)"
        ),
        contiguous=True,
        large_grads=False,
    ),
]

__all__ = ["ROWS"]
