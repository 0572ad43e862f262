"""Parity table for the losses: every functional loss, drawn over shapes, dtypes and kwargs;
the same rows under ``torch.autocast`` (CPU and CUDA); inputs of mixed dtypes. Bad input:
:mod:`reimpl_parity.cases.loss_errors` (re-exported here as ``LOSS_ERROR_CASES``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as TF
from hypothesis import strategies as st

import reimpl.nn.functional as F
from reimpl_parity.cases import _autocast as autocast
from reimpl_parity.cases.loss_errors import LOSS_ERROR_CASES
from reimpl_parity.cases.losses_ctc import CTC_CASES, CTC_ERROR_CASES
from reimpl_parity.cases.losses_lean import LEAN_CASES, LEAN_ERROR_CASES
from reimpl_parity.cases.losses_likelihood import LIKELIHOOD_CASES, LIKELIHOOD_ERROR_CASES
from reimpl_parity.cases.losses_margin import MARGIN_CASES, MARGIN_ERROR_CASES
from reimpl_parity.compare import TOLERANCES
from reimpl_parity.harness import Case
from reimpl_parity.strategies import (
    Call,
    TensorSpec,
    optional_kwargs,
    reductions,
    seeds,
    shapes,
    tensors,
)

Draw = Callable[[st.SearchStrategy[Any]], Any]


@st.composite
def _classification_shapes(draw: Draw) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """(input shape, class-index target shape, n_classes): (C), (N, C) or (N, C, d1, ..)."""
    rank = draw(st.sampled_from([1, 2, 2, 3, 4]))
    c = draw(st.integers(1, 6))
    if rank == 1:
        return (c,), (), c
    n = draw(st.integers(0, 5))
    extra = draw(shapes(rank - 2, rank - 2, 1, 3))
    return (n, c, *extra), (n, *extra), c


def _class_weight(dtype: torch.dtype, c: int) -> st.SearchStrategy[TensorSpec]:
    return tensors((c,), dtype, kind="positive", low=0.1, high=2.0, layouts=("contiguous",))


@st.composite
def _class_index_call(draw: Draw, dtype: torch.dtype, *, smoothing: bool) -> Call:
    shape, tshape, c = draw(_classification_shapes())
    # 16-bit sums of ±1e4 terms cancel; torch accumulates nll_loss in 16 bits there, so
    # its result is only good to the terms' precision: keep "large" to the wider types.
    regimes = (
        ("normal", "tiny", "special")
        if dtype.itemsize == 2
        else ("normal", "large", "tiny", "special")
    )
    # torch's spatial nll_loss backward refuses non-contiguous inputs (a torch bug).
    layouts = (
        ("contiguous",)
        if len(shape) > 2 and not smoothing
        else ("contiguous", "transposed", "strided")
    )
    x = draw(tensors(shape, dtype, requires_grad=True, regimes=regimes, layouts=layouts))
    # uint8 targets only up to 2-D inputs: torch's spatial backward rejects them (a torch
    # bug; reimpl computes the gradient), see the README's list of known differences.
    t_dtype = draw(
        st.sampled_from(
            [torch.int64, torch.int64, torch.uint8] if len(shape) <= 2 else [torch.int64]
        )
    )
    t = draw(tensors(tshape, t_dtype, kind="int", low=0, high=c))
    strategies: dict[str, st.SearchStrategy[Any]] = {
        "weight": _class_weight(dtype, c),
        # -100 never matches; a class index makes some samples ignored
        "ignore_index": st.sampled_from([-100, 0, c - 1]),
        "reduction": reductions,
    }
    if smoothing:
        strategies["label_smoothing"] = st.sampled_from([0.0, 0.05, 0.1, 0.5, 1.0, -0.1])
    return Call((x, t), draw(optional_kwargs(strategies)), seed=draw(seeds))


@st.composite
def _class_probability_call(draw: Draw, dtype: torch.dtype) -> Call:
    shape, _, c = draw(_classification_shapes())
    x = draw(tensors(shape, dtype, requires_grad=True, regimes=("normal", "large", "tiny")))
    t = draw(tensors(shape, dtype, kind="unit", requires_grad=draw(st.booleans())))
    kw = draw(
        optional_kwargs(
            {
                "weight": _class_weight(dtype, c),
                "reduction": reductions,
                "label_smoothing": st.sampled_from([0.0, 0.1, 0.5, 1.0, -0.5]),
                "ignore_index": st.just(0),  # has no effect on probability targets
            }
        )
    )
    return Call((x, t), kw, seed=draw(seeds))


@st.composite
def _log_softmax_call(draw: Draw, dtype: torch.dtype) -> Call:
    shape = draw(shapes(1, 4, 0, 6))
    dim = draw(st.integers(-len(shape), len(shape) - 1))
    x = draw(tensors(shape, dtype, requires_grad=True))
    return Call((x,), {"dim": dim}, seed=draw(seeds))


def _broadcast_partner(draw: Draw, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Usually the same shape; sometimes one that broadcasts against it (torch warns)."""
    if not shape or draw(st.integers(0, 4)):
        return shape
    drop = draw(st.integers(0, len(shape)))
    out = list(shape[drop:])
    for i in range(len(out)):
        if draw(st.booleans()):
            out[i] = 1
    return tuple(out)


@st.composite
def _regression_call(
    draw: Draw,
    dtype: torch.dtype,
    *,
    extra: dict[str, st.SearchStrategy[Any]],
    weighted: bool,
    legacy: bool,
) -> Call:
    shape = draw(shapes(0, 4, 0, 5))
    x = draw(tensors(shape, dtype, requires_grad=True))
    t = draw(tensors(_broadcast_partner(draw, shape), dtype, requires_grad=draw(st.booleans())))
    strategies: dict[str, st.SearchStrategy[Any]] = {"reduction": reductions, **extra}
    if weighted:
        strategies["weight"] = tensors(shape, dtype, kind="positive", low=0.1, high=2.0)
    if legacy:
        strategies["size_average"] = st.booleans()
        strategies["reduce"] = st.booleans()
    return Call((x, t), draw(optional_kwargs(strategies)), seed=draw(seeds))


@st.composite
def _bce_call(draw: Draw, dtype: torch.dtype) -> Call:
    shape = draw(shapes(0, 4, 0, 5))
    x = draw(tensors(shape, dtype, kind="unit", requires_grad=True))
    t = draw(tensors(shape, dtype, kind="unit", requires_grad=draw(st.booleans())))
    wshape = draw(st.sampled_from([shape, shape[-1:], ()]))
    kw = draw(
        optional_kwargs(
            {
                "weight": tensors(wshape, dtype, kind="positive", low=0.1, high=2.0),
                "reduction": reductions,
            }
        )
    )
    return Call((x, t), kw, seed=draw(seeds))


@st.composite
def _bce_logits_call(draw: Draw, dtype: torch.dtype) -> Call:
    shape = draw(shapes(0, 4, 0, 5))
    x = draw(tensors(shape, dtype, requires_grad=True))
    t = draw(tensors(shape, dtype, kind="unit", requires_grad=draw(st.booleans())))
    wshape = draw(st.sampled_from([shape, shape[-1:], ()]))
    kw = draw(
        optional_kwargs(
            {
                "weight": tensors(wshape, dtype, kind="positive", low=0.1, high=2.0),
                "pos_weight": tensors(shape[-1:], dtype, kind="positive", low=0.1, high=5.0),
                "reduction": reductions,
            }
        )
    )
    return Call((x, t), kw, seed=draw(seeds))


# torch's 16-bit kernels round some intermediates (the target gradients of the BCE family,
# the mean's division) at other points than our elementwise ops; allow 2 ulp there.
_TWO_ULP = {torch.float16: (2e-3, 1e-5), torch.bfloat16: (3.2e-2, 1e-5)}
# log(1-x) - log(x) cancels near x = 1/2, so a 16-bit target gradient there is only good
# to about one ulp of the logs themselves: an absolute floor on top of two ulp.
_BCE_16 = {torch.float16: (2e-3, 1e-3), torch.bfloat16: (3.2e-2, 1e-2)}
# torch sums 16-bit spatial nll_loss terms in 16 bits: the result is good to about one ulp
# of the running partial sums (up to ~10 for the drawn sizes: 0.008 in float16, 0.06 in
# bfloat16), not of the final sum, which may cancel to much less.
_SUM_16 = {torch.float16: (2e-3, 1e-2), torch.bfloat16: (3.2e-2, 8e-2)}

_PLAIN_CASES: list[Case] = [
    Case("log_softmax", F.log_softmax, TF.log_softmax, _log_softmax_call, family="losses"),
    Case(
        "cross_entropy[index]",
        F.cross_entropy,
        TF.cross_entropy,
        lambda dt: _class_index_call(dt, smoothing=True),
        family="losses",
        tol=_TWO_ULP,
        why="16-bit: torch divides by the total weight in float32",
    ),
    Case(
        "cross_entropy[probs]",
        F.cross_entropy,
        TF.cross_entropy,
        _class_probability_call,
        family="losses",
    ),
    Case(
        "nll_loss",
        F.nll_loss,
        TF.nll_loss,
        lambda dt: _class_index_call(dt, smoothing=False),
        family="losses",
        tol=_SUM_16,
        why="torch's 16-bit spatial reduction rounds partial sums",
    ),
    Case(
        "binary_cross_entropy",
        F.binary_cross_entropy,
        TF.binary_cross_entropy,
        _bce_call,
        family="losses",
        tol=_BCE_16,
        why="16-bit target gradient cancels near 1/2",
    ),
    Case(
        "binary_cross_entropy_with_logits",
        F.binary_cross_entropy_with_logits,
        TF.binary_cross_entropy_with_logits,
        _bce_logits_call,
        family="losses",
        tol=_BCE_16,
        why="16-bit target gradient cancels near 1/2",
    ),
    Case(
        "mse_loss",
        F.mse_loss,
        TF.mse_loss,
        lambda dt: _regression_call(dt, extra={}, weighted=True, legacy=True),
        family="losses",
        tol=_TWO_ULP,
        why="16-bit: torch folds the mean's 1/n into the gradient",
    ),
    Case(
        "l1_loss",
        F.l1_loss,
        TF.l1_loss,
        lambda dt: _regression_call(dt, extra={}, weighted=True, legacy=True),
        family="losses",
        tol=_TWO_ULP,
        why="16-bit: torch folds the mean's 1/n into the gradient",
    ),
    Case(
        "smooth_l1_loss",
        F.smooth_l1_loss,
        TF.smooth_l1_loss,
        lambda dt: _regression_call(
            dt,
            extra={"beta": st.sampled_from([0.0, 0.5, 1.0, 2.0, 1e-3])},
            weighted=False,
            legacy=True,
        ),
        family="losses",
        tol=_TWO_ULP,
        why="16-bit: torch folds the mean's 1/n into the gradient",
    ),
    Case(
        "huber_loss",
        F.huber_loss,
        TF.huber_loss,
        lambda dt: _regression_call(
            dt, extra={"delta": st.sampled_from([0.5, 1.0, 2.0, 1e-3])}, weighted=True, legacy=False
        ),
        family="losses",
        tol=_TWO_ULP,
        why="16-bit: torch scales the gradient before the product",
    ),
]


# ------------------------------------------------------------------- mixed input dtypes

_OTHER_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


@st.composite
def _huber_mixed_call(draw: Draw, dtype: torch.dtype) -> Call:
    """A float input with a target of another dtype (float, integer or bool)."""
    shape = draw(shapes(0, 3, 0, 5))
    x = draw(tensors(shape, dtype, requires_grad=True, regimes=("normal", "large", "tiny")))
    t_dtype = draw(st.sampled_from([d for d in _OTHER_DTYPES if d != dtype] + [torch.int64]))
    if t_dtype.is_floating_point:
        t = draw(tensors(shape, t_dtype, requires_grad=draw(st.booleans())))
    else:
        t = draw(tensors(shape, t_dtype, kind="int", low=-3, high=4))
    strategies: dict[str, st.SearchStrategy[Any]] = {
        "reduction": reductions,
        "delta": st.sampled_from([0.5, 1.0, 2.0]),
        "weight": tensors(shape, dtype, kind="positive", low=0.1, high=2.0),
    }
    return Call((x, t), draw(optional_kwargs(strategies)), seed=draw(seeds))


@st.composite
def _bce_logits_mixed_call(draw: Draw, dtype: torch.dtype) -> Call:
    """Logits of one float dtype; target, weight and pos_weight of wider or equal ones
    (torch rounds into the target's dtype, in place)."""
    shape = draw(shapes(1, 3, 1, 5))
    wider = [d for d in (torch.float32, torch.float64) if d.itemsize >= dtype.itemsize]
    x = draw(tensors(shape, dtype, requires_grad=True))
    t = draw(tensors(shape, draw(st.sampled_from(wider)), kind="unit"))
    kw = draw(
        optional_kwargs(
            {
                "weight": tensors(
                    shape, draw(st.sampled_from(wider)), kind="positive", low=0.1, high=2.0
                ),
                "pos_weight": tensors(
                    shape[-1:], draw(st.sampled_from(wider)), kind="positive", low=0.1, high=5.0
                ),
                "reduction": reductions,
            }
        )
    )
    return Call((x, t), kw, seed=draw(seeds))


MIXED_DTYPE_CASES: list[Case] = [
    # the result has the input's dtype; torch's backward refuses the pair (RuntimeError)
    Case(
        "huber_loss[mixed dtypes]",
        F.huber_loss,
        TF.huber_loss,
        _huber_mixed_call,
        family="losses",
        tol=_TWO_ULP,
        why="16-bit: torch reduces the rounded terms in its own order",
    ),
    Case(
        "binary_cross_entropy_with_logits[mixed dtypes]",
        F.binary_cross_entropy_with_logits,
        TF.binary_cross_entropy_with_logits,
        _bce_logits_mixed_call,
        family="losses",
        tol=_BCE_16,
        why="16-bit logits: gradients formed in the wider dtype, then rounded",
    ),
]

# --------------------------------------------------------------------------- autocast

#: on CPU, autocast runs these in float32 (torch's fp32 policy): float32's tolerance holds
#: for the result whatever the inputs' dtype (log_softmax and the weighted mse/l1 forms are
#: not listed); the gradients of 16-bit inputs are rounded back to 16 bits, where a
#: last-bit difference of the float32 gradient (a broadcast's sum in another order) can
#: flip one rounding: one ulp of the input's dtype there
_FP32_ON_CPU = {
    "cross_entropy[index]",
    "cross_entropy[probs]",
    "nll_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "smooth_l1_loss",
    "huber_loss",
}
_F32 = {dt: TOLERANCES[torch.float32] for dt in autocast.INPUT_DTYPES}
_F32_GRADS_16 = {**_F32, torch.float16: (1e-3, 1e-5), torch.bfloat16: (7.9e-3, 1e-5)}


def _autocast_rows(plain: list[Case]) -> list[Case]:
    rows = []
    for case in plain:
        for device, dtype in autocast.RUNS:
            if device == "cpu" and case.name in _FP32_ON_CPU:
                why = (
                    "CPU autocast computes this loss in float32 (torch's fp32 policy); a "
                    "16-bit input's gradient is rounded back to 16 bits (one ulp)"
                )
                tol = _F32_GRADS_16
                rows.append(autocast.autocast_case(case, device, dtype, tol=tol, why=why))
            else:
                rows.append(autocast.autocast_case(case, device, dtype))
    return rows


LOSS_CASES: list[Case] = [
    *_PLAIN_CASES,
    *MIXED_DTYPE_CASES,
    *_autocast_rows(_PLAIN_CASES),
    *CTC_CASES,
    *LEAN_CASES,
    *LIKELIHOOD_CASES,
    *MARGIN_CASES,
]
LOSS_ERROR_CASES = [
    *LOSS_ERROR_CASES,
    *CTC_ERROR_CASES,
    *LEAN_ERROR_CASES,
    *LIKELIHOOD_ERROR_CASES,
    *MARGIN_ERROR_CASES,
]

__all__ = ["LOSS_CASES", "LOSS_ERROR_CASES", "MIXED_DTYPE_CASES"]
