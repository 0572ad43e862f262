"""Parity table for the losses: every functional loss, drawn over shapes, dtypes and kwargs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as TF
from hypothesis import strategies as st

import reimpl.nn.functional as F
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

LOSS_CASES: list[Case] = [
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


# ---------------------------------------------------------------------------- bad input


def _t(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, **kw: Any) -> TensorSpec:
    return TensorSpec(tuple(shape), dtype, seed=0, **kw)


def _idx(value: int, shape: tuple[int, ...] | int, dtype: torch.dtype = torch.int64) -> TensorSpec:
    """A class-index target filled with one value."""
    shape = (shape,) if isinstance(shape, int) else shape
    return TensorSpec(tuple(shape), dtype, seed=0, kind="fill", low=value)


def _error_case(name: str, fn: str, *args: Any, **kwargs: Any) -> Case:
    call = Call(args, kwargs)
    return Case(
        f"{fn}:{name}",
        getattr(F, fn),
        getattr(TF, fn),
        lambda dt: st.just(call),
        family="loss-errors",
        dtypes=(torch.float32,),
        backward=False,
        devices=("cpu",),
    )


LOSS_ERROR_CASES: list[Case] = [
    _error_case("int32 target", "cross_entropy", _t((3, 4)), _idx(1, 3, torch.int32)),
    _error_case("float target of other shape", "cross_entropy", _t((3, 4)), _t((3,))),
    _error_case("2-D index target", "cross_entropy", _t((3, 4)), _t((3, 5))),
    _error_case("target out of range", "cross_entropy", _t((3, 4)), _idx(7, 3)),
    _error_case("negative target", "cross_entropy", _t((3, 4)), _idx(-1, 3)),
    _error_case("weight of wrong size", "cross_entropy", _t((3, 4)), _idx(1, 3), weight=_t((3,))),
    _error_case("2-D weight", "cross_entropy", _t((3, 4)), _idx(1, 3), weight=_t((4, 1))),
    _error_case(
        "weight dtype", "cross_entropy", _t((3, 4)), _idx(1, 3), weight=_t((4,), torch.float64)
    ),
    _error_case(
        "label_smoothing > 1", "cross_entropy", _t((3, 4)), _idx(1, 3), label_smoothing=1.5
    ),
    _error_case(
        "label_smoothing > 1, probs", "cross_entropy", _t((3, 4)), _t((3, 4)), label_smoothing=1.5
    ),
    _error_case("unknown reduction", "cross_entropy", _t((3, 4)), _idx(1, 3), reduction="avg"),
    _error_case("batch mismatch", "cross_entropy", _t((3, 4)), _idx(1, 2)),
    _error_case("0-D input", "cross_entropy", _t(()), _idx(0, ())),
    _error_case("0-D input, float target", "cross_entropy", _t(()), _t(())),
    _error_case("spatial target shape", "cross_entropy", _t((2, 3, 4)), _idx(0, (2, 5))),
    _error_case(
        "long probabilities",
        "cross_entropy",
        _t((3, 4)),
        _t((3, 4), torch.int64, kind="int", high=2),
    ),
    _error_case(
        "integer input", "cross_entropy", _t((3, 4), torch.int64, kind="int", high=3), _idx(1, 3)
    ),
    _error_case("0-D input", "nll_loss", _t(()), _idx(0, ())),
    _error_case("1-D input with 1-D target", "nll_loss", _t((4,)), _idx(1, 2)),
    _error_case("float target", "nll_loss", _t((3, 4)), _t((3,))),
    _error_case("target out of range", "nll_loss", _t((3, 4)), _idx(9, 3)),
    _error_case("spatial target out of range", "nll_loss", _t((2, 3, 4, 5)), _idx(9, (2, 4, 5))),
    _error_case(
        "integer input", "nll_loss", _t((3, 4), torch.int64, kind="int", high=3), _idx(1, 3)
    ),
    _error_case(
        "input above 1",
        "binary_cross_entropy",
        _t((3,), kind="fill", low=1.5),
        _t((3,), kind="unit"),
    ),
    _error_case(
        "nan input",
        "binary_cross_entropy",
        _t((3,), kind="fill", low=float("nan")),
        _t((3,), kind="unit"),
    ),
    _error_case(
        "target below 0",
        "binary_cross_entropy",
        _t((3,), kind="unit"),
        _t((3,), kind="fill", low=-1),
    ),
    _error_case(
        "target size", "binary_cross_entropy", _t((3,), kind="unit"), _t((3, 1), kind="unit")
    ),
    _error_case(
        "weight not broadcastable",
        "binary_cross_entropy",
        _t((3, 2), kind="unit"),
        _t((3, 2), kind="unit"),
        weight=_t((4,)),
    ),
    _error_case(
        "integer target",
        "binary_cross_entropy",
        _t((3,), kind="unit"),
        _t((3,), torch.int64, kind="int", high=2),
    ),
    _error_case(
        "float64 target",
        "binary_cross_entropy",
        _t((3,), kind="unit"),
        _t((3,), torch.float64, kind="unit"),
    ),
    _error_case(
        "unknown reduction",
        "binary_cross_entropy",
        _t((3,), kind="unit"),
        _t((3,), kind="unit"),
        reduction="avg",
    ),
    _error_case("target size", "binary_cross_entropy_with_logits", _t((3,)), _t((3, 1))),
    _error_case(
        "pos_weight size",
        "binary_cross_entropy_with_logits",
        _t((3, 2)),
        _t((3, 2)),
        pos_weight=_t((3,)),
    ),
    _error_case(
        "weight size", "binary_cross_entropy_with_logits", _t((3, 2)), _t((3, 2)), weight=_t((3,))
    ),
    _error_case(
        "integer target",
        "binary_cross_entropy_with_logits",
        _t((3,)),
        _t((3,), torch.int64, kind="int", high=2),
    ),
    _error_case("not broadcastable", "mse_loss", _t((3, 2)), _t((4,))),
    _error_case(
        "integer inputs",
        "mse_loss",
        _t((2,), torch.int64, kind="int", high=3),
        _t((2,), torch.int64, kind="int", high=3),
    ),
    _error_case("unknown reduction", "mse_loss", _t((3,)), _t((3,)), reduction="bad"),
    _error_case("weight size", "mse_loss", _t((3,)), _t((3,)), weight=_t((2,))),
    _error_case(
        "weighted, unknown reduction",
        "mse_loss",
        _t((3,)),
        _t((3,)),
        weight=_t((3,)),
        reduction="bad",
    ),
    _error_case(
        "integer inputs",
        "l1_loss",
        _t((2,), torch.int64, kind="int", high=3),
        _t((2,), torch.int64, kind="int", high=3),
    ),
    _error_case("not broadcastable", "l1_loss", _t((3, 2)), _t((4,))),
    _error_case("negative beta", "smooth_l1_loss", _t((3,)), _t((3,)), beta=-1.0),
    _error_case(
        "integer inputs",
        "smooth_l1_loss",
        _t((2,), torch.int64, kind="int", high=3),
        _t((2,), torch.int64, kind="int", high=3),
    ),
    _error_case("zero delta", "huber_loss", _t((3,)), _t((3,)), delta=0.0),
    _error_case("negative delta", "huber_loss", _t((3,)), _t((3,)), delta=-1.0),
    _error_case("unknown reduction", "huber_loss", _t((3,)), _t((3,)), reduction="bad"),
    _error_case("weight size", "huber_loss", _t((3,)), _t((3,)), weight=_t((2,))),
    _error_case("dim out of range", "log_softmax", _t((3, 4)), dim=2),
    _error_case("integer input", "log_softmax", _t((3,), torch.int64, kind="int", high=3), dim=0),
]
