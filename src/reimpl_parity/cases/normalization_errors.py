"""Bad input for the normalization layers: each row one call that torch refuses, compared
by exception type (the message is reimpl's own), in torch's order of checks where several
apply. Re-exported by :mod:`reimpl_parity.cases.normalization`."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as TF
from hypothesis import strategies as st

import reimpl.nn as RN
import reimpl.nn.functional as F
from reimpl_parity.harness import Case, fixed_call_case
from reimpl_parity.strategies import Call, TensorSpec

FAMILY = "normalization-errors"


def quiet_dispatch_hint(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` without torch's once-per-process hint that an RMS weight of another dtype
    "cannot dispatch to fused implementation" (a note about torch's kernel choice, which
    reimpl, with one path, does not give; once per process, it cannot be compared)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
            return fn(*args, **kwargs)

    return run


def _t(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, **kw: Any) -> TensorSpec:
    return TensorSpec(tuple(shape), dtype, seed=0, **kw)


def _error(name: str, fn: str, *args: Any, **kwargs: Any) -> Case:
    ours, theirs = quiet_dispatch_hint(getattr(F, fn)), quiet_dispatch_hint(getattr(TF, fn))
    return fixed_call_case(f"{fn}:{name}", ours, theirs, FAMILY, *args, **kwargs)


def _module_error(name: str, cls: str, ctor: tuple[Any, ...], *args: Any) -> Case:
    def make(ns: Any) -> Callable[..., Any]:
        def run(*a: Any) -> Any:
            module = getattr(ns, cls)(*ctor)
            return module(*a) if a else module

        return run

    return Case(
        f"{cls}:{name}",
        make(RN),
        make(torch.nn),
        lambda dt: st.just(Call(args)),
        family=FAMILY,
        dtypes=(torch.float32,),
        backward=False,
        devices=("cpu",),
    )


_X = _t((3, 4))
_X3 = _t((2, 4, 3))
_I = _t((3, 4), torch.int64, kind="int", high=3)
_H = torch.float16
_D = torch.float64
_F = torch.float32

NORMALIZATION_ERROR_CASES: list[Case] = [
    # layer_norm
    _error("empty normalized_shape", "layer_norm", _X, []),
    _error("int normalized_shape", "layer_norm", _X, 4),
    _error("float in normalized_shape", "layer_norm", _X, [4.0]),
    _error("bool in normalized_shape", "layer_norm", _X, [True]),
    _error("trailing shape mismatch", "layer_norm", _X, [5]),
    _error("more dims than the input", "layer_norm", _X, [2, 3, 4]),
    _error("0-D input", "layer_norm", _t(()), [1]),
    _error("weight shape", "layer_norm", _X, [4], _t((5,))),
    _error("weight (1, 4)", "layer_norm", _X, [4], _t((1, 4))),
    _error("bias shape", "layer_norm", _X, [4], None, _t((5,))),
    _error("weight shape before input shape", "layer_norm", _X, [5], _t((4,))),
    _error("integer input", "layer_norm", _I, [4]),
    _error("integer input and weight", "layer_norm", _I, [4], _t((4,), torch.int64)),
    _error("integer input, float weight", "layer_norm", _I, [4], _t((4,))),
    _error("integer weight", "layer_norm", _X, [4], _t((4,), torch.int64)),
    _error("complex input", "layer_norm", _t((3, 4), torch.complex64), [4]),
    _error("float64 input, float32 weight", "layer_norm", _t((3, 4), _D), [4], _t((4,))),
    _error("float32 input, float64 weight", "layer_norm", _X, [4], _t((4,), _D)),
    _error("float32 input, float16 weight", "layer_norm", _X, [4], _t((4,), _H)),
    _error("float64/float32 before shapes", "layer_norm", _t((3, 4), _D), [5], _t((5,))),
    _error("float16 input, float64 weight", "layer_norm", _t((3, 4), _H), [4], _t((4,), _D)),
    _error(
        "float16 input, float32 weight, float16 bias",
        "layer_norm",
        _t((3, 4), _H),
        [4],
        _t((4,)),
        _t((4,), _H),
    ),
    _error(
        "float16 input, float16 weight, float32 bias",
        "layer_norm",
        _t((3, 4), _H),
        [4],
        _t((4,), _H),
        _t((4,)),
    ),
    _error(
        "bfloat16 input, float16 weight",
        "layer_norm",
        _t((3, 4), torch.bfloat16),
        [4],
        _t((4,), _H),
    ),
    # rms_norm
    _error("empty normalized_shape", "rms_norm", _X, []),
    _error("int normalized_shape", "rms_norm", _X, 4),
    _error("bool in normalized_shape", "rms_norm", _X, [True]),
    _error("trailing shape mismatch", "rms_norm", _X, [5]),
    _error("more dims than the input", "rms_norm", _t((4,)), [2, 4]),
    _error("0-D input", "rms_norm", _t(()), [1]),
    _error("integer 0-D input", "rms_norm", _t((), torch.int64, kind="int", high=3), [1]),
    _error("weight shape", "rms_norm", _X, [4], _t((5,))),
    _error("weight (1, 4)", "rms_norm", _X, [4], _t((1, 4))),
    _error("weight shape before rank", "rms_norm", _t((4,)), [2, 4], _t((3,))),
    _error("integer input", "rms_norm", _I, [4]),
    _error("integer input, wrong shape", "rms_norm", _I, [5]),
    # group_norm
    _error("1-D input", "group_norm", _t((4,)), 2),
    _error("0-D input", "group_norm", _t(()), 1),
    _error("1-D input, 0 groups", "group_norm", _t((4,)), 0),
    _error("channels not divisible", "group_norm", _X3, 3),
    _error("channels not divisible (2-D)", "group_norm", _t((2, 3)), 2),
    _error("0 groups", "group_norm", _X3, 0),
    _error("negative groups", "group_norm", _X3, -2),
    _error("float groups", "group_norm", _X3, 2.0),
    _error("bool groups", "group_norm", _t((2, 4)), True),
    _error("str groups", "group_norm", _X3, "2"),
    _error("one value per group", "group_norm", _t((1, 4)), 4),
    _error("one value per group (3-D)", "group_norm", _t((1, 4, 1)), 4),
    _error("more groups than channels", "group_norm", _t((2, 4)), 8),
    _error("one value, floor division", "group_norm", _t((1, 3)), 2),
    _error("weight size", "group_norm", _X3, 2, _t((3,))),
    _error("weight (2, 2)", "group_norm", _X3, 2, _t((2, 2))),
    _error("bias size", "group_norm", _X3, 2, None, _t((3,))),
    _error("bias (2, 2)", "group_norm", _X3, 2, None, _t((2, 2))),
    _error("integer input", "group_norm", _t((2, 4, 3), torch.int64, kind="int", high=3), 2),
    _error(
        "integer input, float weight",
        "group_norm",
        _t((2, 4, 3), torch.int64, kind="int", high=3),
        2,
        _t((4,)),
    ),
    _error("complex input", "group_norm", _t((2, 4, 3), torch.complex64), 2),
    _error("float64 input, float32 weight", "group_norm", _t((2, 4, 3), _D), 2, _t((4,))),
    _error("float32 input, float64 weight", "group_norm", _X3, 2, _t((4,), _D)),
    _error("float16 input, float64 weight", "group_norm", _t((2, 4, 3), _H), 2, _t((4,), _D)),
    _error(
        "float16 input, float32 weight, float16 bias",
        "group_norm",
        _t((2, 4, 3), _H),
        2,
        _t((4,)),
        _t((4,), _H),
    ),
    _error("divisibility before dtypes", "group_norm", _t((2, 4), _D), 3, _t((4,))),
    # modules
    _module_error("num_channels % num_groups", "GroupNorm", (3, 4)),
    _module_error("0 groups", "GroupNorm", (0, 4)),
    _module_error("1-D input", "GroupNorm", (2, 4), _t((4,))),
    _module_error("channel mismatch", "GroupNorm", (2, 4), _t((2, 6))),
    _module_error("float normalized_shape", "LayerNorm", (4.0,)),
    _module_error("negative normalized_shape", "LayerNorm", (-1,)),
    _module_error("input shape mismatch", "LayerNorm", (5,), _X),
    _module_error("float normalized_shape", "RMSNorm", (4.0,)),
    _module_error("input shape mismatch", "RMSNorm", (5,), _X),
]


__all__ = ["NORMALIZATION_ERROR_CASES"]
