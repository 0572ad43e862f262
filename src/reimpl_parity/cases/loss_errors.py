"""Bad input for the losses: each row one call that torch refuses (or, for a module, a
construction it refuses); reimpl must raise the same exception type, with its own message."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as TF
from hypothesis import strategies as st

import reimpl.nn as RN
import reimpl.nn.functional as F
from reimpl_parity.harness import Case, fixed_call_case
from reimpl_parity.strategies import Call, TensorSpec


def _t(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, **kw: Any) -> TensorSpec:
    return TensorSpec(tuple(shape), dtype, seed=0, **kw)


def _idx(value: int, shape: tuple[int, ...] | int, dtype: torch.dtype = torch.int64) -> TensorSpec:
    """A class-index target filled with one value."""
    shape = (shape,) if isinstance(shape, int) else shape
    return TensorSpec(tuple(shape), dtype, seed=0, kind="fill", low=value)


def _error_case(name: str, fn: str, *args: Any, **kwargs: Any) -> Case:
    return fixed_call_case(
        f"{fn}:{name}", getattr(F, fn), getattr(TF, fn), "loss-errors", *args, **kwargs
    )


def _ctor_error(name: str, cls: str, **ctor_kw: Any) -> Case:
    """A module construction torch refuses (a torch version that accepts it must give the
    same module: compared by repr)."""

    def make(ns: Any) -> Any:
        return lambda: repr(getattr(ns, cls)(**ctor_kw))

    return Case(
        f"{cls}():{name}",
        make(RN),
        make(torch.nn),
        lambda dt: st.just(Call(())),
        family="loss-errors",
        dtypes=(torch.float32,),
        backward=False,
        devices=("cpu",),
    )


def _ints(shape: tuple[int, ...], dtype: torch.dtype = torch.int64, high: int = 2) -> TensorSpec:
    return _t(shape, dtype, kind="int", high=high)


_BOOL = _ints((3,), torch.bool)
_COMPLEX = _t((3,), torch.complex64, kind="unit")

#: integer, bool and complex inputs: torch has no kernel for them (NotImplementedError),
#: and checks that input and target share a dtype first (RuntimeError)
_NON_FLOAT_ERRORS: list[Case] = [
    _error_case("int64 input and target", "binary_cross_entropy", _ints((3,)), _ints((3,))),
    _error_case(
        "int32 input and target",
        "binary_cross_entropy",
        _ints((3,), torch.int32),
        _ints((3,), torch.int32),
    ),
    _error_case(
        "uint8 input and target",
        "binary_cross_entropy",
        _ints((3,), torch.uint8),
        _ints((3,), torch.uint8),
    ),
    _error_case(
        "int64 values out of [0, 1]",
        "binary_cross_entropy",
        _ints((3,), high=5),
        _ints((3,), high=5),
    ),
    _error_case("bool input and target", "binary_cross_entropy", _BOOL, _BOOL),
    _error_case(
        "bool input and target, float weight",
        "binary_cross_entropy",
        _BOOL,
        _BOOL,
        weight=_t((3,)),
    ),
    _error_case("integer input, float target", "binary_cross_entropy", _ints((3,)), _t((3,))),
    _error_case("complex input and target", "binary_cross_entropy", _COMPLEX, _COMPLEX),
    _error_case(
        "int64 input and target", "binary_cross_entropy_with_logits", _ints((3,)), _ints((3,))
    ),
    _error_case(
        "int32 input and target",
        "binary_cross_entropy_with_logits",
        _ints((3,), torch.int32),
        _ints((3,), torch.int32),
    ),
    _error_case("bool input and target", "binary_cross_entropy_with_logits", _BOOL, _BOOL),
    _error_case(
        "integer input, float target", "binary_cross_entropy_with_logits", _ints((3,)), _t((3,))
    ),
    _error_case("bool input, float target", "binary_cross_entropy_with_logits", _BOOL, _t((3,))),
    _error_case("float input, bool target", "binary_cross_entropy_with_logits", _t((3,)), _BOOL),
    _error_case("complex input and target", "binary_cross_entropy_with_logits", _COMPLEX, _COMPLEX),
    _error_case("integer input, float target", "huber_loss", _ints((3,), high=3), _t((3,))),
    _error_case("integer input and target", "huber_loss", _ints((3,), high=3), _ints((3,), high=3)),
    _error_case("bool input and target", "huber_loss", _BOOL, _BOOL),
    _error_case("float input, complex target", "huber_loss", _t((3,)), _COMPLEX),
    _error_case("complex input and target", "huber_loss", _COMPLEX, _COMPLEX),
]

#: arguments torch's parser refuses, and constructions torch's modules refuse
_ARGUMENT_ERRORS: list[Case] = [
    _error_case("complex delta", "huber_loss", _t((3,)), _t((3,)), delta=1j),
    _error_case("str delta", "huber_loss", _t((3,)), _t((3,)), delta="1"),
    _error_case("None delta", "huber_loss", _t((3,)), _t((3,)), delta=None),
    _error_case("nan delta", "huber_loss", _t((3,)), _t((3,)), delta=float("nan")),
    _error_case("1-element tensor delta", "huber_loss", _t((3,)), _t((3,)), delta=_t((1,))),
    _ctor_error("complex delta", "HuberLoss", delta=1j),
    _ctor_error("str delta", "HuberLoss", delta="1"),
    _ctor_error("tensor delta", "HuberLoss", delta=torch.tensor(1.0)),
    _ctor_error("numpy float32 delta", "HuberLoss", delta=np.float32(1.0)),
]

LOSS_ERROR_CASES: list[Case] = [
    *_NON_FLOAT_ERRORS,
    *_ARGUMENT_ERRORS,
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
