"""Parity table for the normalization layers: ``layer_norm``, ``rms_norm`` and
``group_norm`` drawn over shapes (empty and size-1 sides, non-contiguous views,
channels-last), dtypes (16-bit inputs with their own or float32 parameters), ``eps``
(sometimes left out, so the default is hit) and affine parameters on and off; the
LayerNorm/RMSNorm/GroupNorm modules; the same rows under ``torch.autocast``; and bad
input (:mod:`reimpl_parity.cases.normalization_errors`, re-exported here). Rows are made
from the ``_FUNCTIONS`` and ``_MODULES`` tables: a new layer adds its entries there (or
its own rows to ``NORMALIZATION_CASES``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as TF
from hypothesis import strategies as st
from torch import Tensor

import reimpl.nn as RN
import reimpl.nn.functional as F
from reimpl.nn.modules.normalization import GROUP_NORM_BIAS
from reimpl_parity.cases import _autocast as autocast
from reimpl_parity.cases.normalization_errors import (
    NORMALIZATION_ERROR_CASES,
    quiet_dispatch_hint,
)
from reimpl_parity.harness import Case
from reimpl_parity.strategies import FLOAT_DTYPES, REGIMES, Call, TensorSpec, seeds, shapes, tensors

Draw = Callable[[st.SearchStrategy[Any]], Any]
FAMILY = "normalization"
_HALF = (torch.float16, torch.bfloat16)

#: The input gradient is a difference of three terms (g, mean(g), x̂·mean(g·x̂)) that
#: cancel; torch forms it from sums of the raw input (b·x + c) in float32, in another
#: order, so float32 results differ by a few 1e-6 relative where they cancel (as batch
#: norm's, whose row uses the same bound). 16-bit: the same float32 sums can put a result
#: on the other side of a rounding boundary, one 16-bit ulp away (atol at that ulp for
#: values near 0). float64: assert_close's defaults.
_TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
_WHY = (
    "float32: the input gradient's three cancelling terms, summed in another order and "
    "arrangement than torch's; 16-bit: those float32 sums can land one 16-bit ulp away"
)


# ------------------------------------------------------------------ layer norm, RMS norm


def _param_dtype(draw: Draw, dtype: torch.dtype, *, any_dtype: bool = False) -> torch.dtype:
    """The parameters' dtype: the input's, or float32 beside a 16-bit input (layer and
    group norm); RMS norm (``any_dtype``) takes any float dtype."""
    if any_dtype:
        return draw(st.sampled_from([dtype, dtype, torch.float32, torch.float64]))
    return draw(st.sampled_from([dtype, torch.float32])) if dtype in _HALF else dtype


def _param(
    shape: tuple[int, ...], dtype: torch.dtype, *, grad: bool = True
) -> st.SearchStrategy[TensorSpec]:
    return tensors(shape, dtype, requires_grad=grad, regimes=("normal",))


def _layer_param_grad(dtype: torch.dtype, pdt: torch.dtype) -> bool:
    """Whether layer norm's parameter gradients are compared: not beside a 16-bit input.
    torch accumulates them row by row rounded to the input's 16-bit dtype (float32
    parameters too), in per-thread buffers, so its result depends on the thread count
    (with one thread: rounded after every row; a cancelling sum of a few dozen rows is
    then off by several 16-bit ulps). reimpl sums in float32 and rounds once; its 16-bit
    parameter gradients are checked against torch's float32 ones in the unit tests."""
    return dtype not in _HALF


def _regimes(dtype: torch.dtype, *, grad: bool = True) -> tuple[str, ...]:
    """Value regimes drawn. "large" (±1e4·randn) overflows float16 itself (inf inputs are
    "special"'s business). "tiny" (±1e-4·randn, variance far below eps) makes rstd ≈
    1/sqrt(eps) ≈ 316, so the input gradient is a cancellation of ~316-sized terms whose
    float32 residue exceeds any elementwise rtol: in gradient rows only for float64."""
    out = tuple(r for r in REGIMES if not (dtype == torch.float16 and r == "large"))
    if grad and dtype != torch.float64:
        out = tuple(r for r in out if r != "tiny")
    return out


def _weight_beside_bias(
    draw: Draw,
    kw: dict[str, Any],
    dtype: torch.dtype,
    pdt: torch.dtype,
    shape: tuple[int, ...],
    *,
    always: bool = False,
) -> None:
    """A bias comes with a weight where torch's CPU backward has no oracle without one:
    group norm always ("tensor does not have a device"), layer norm for a float32 bias
    beside a 16-bit input ("expected scalar type Half but found Float"). Both are torch
    bugs; reimpl computes those gradients (``test_normalization_modules`` checks them
    against the float64 composite)."""
    if (always or pdt != dtype) and "bias" in kw and "weight" not in kw:
        kw["weight"] = draw(_param(shape, pdt))


def _row_size_ok(n: int, dtype: torch.dtype) -> bool:
    """Whether gradient rows draw rows (or groups) of ``n`` values. With two or three,
    x̂ = ±1 up to rounding and the input gradient is a cancellation residue, in torch as
    in any implementation; with one, the exact gradient is 0, which reimpl's centered
    closed form gives, while torch's rearranged one (a·g + b·x + c) leaves its rounding
    (about ulp(rstd·g) = 3e-5 in float32). float64 keeps both well inside its tolerance.
    Rows of one value are compared forward-only in every dtype (``[one value per row]``),
    where reimpl rounds as torch does."""
    if dtype == torch.float64:
        return True
    return n == 0 or n >= 4


@st.composite
def _trailing_call(draw: Draw, dtype: torch.dtype, *, rms: bool) -> Call:
    """(input, normalized_shape) with a weight (and for layer norm a bias) or not."""
    lead = draw(shapes(0, 2, 0, 4))
    norm = draw(shapes(1, 3, 1, 6))
    if not _row_size_ok(math.prod(norm), dtype):
        norm = (*norm[:-1], 4)
    if draw(st.integers(0, 9)) == 0:  # an empty normalized dimension
        norm = (*norm[:-1], 0)
    x = draw(tensors((*lead, *norm), dtype, requires_grad=True, regimes=_regimes(dtype)))
    pdt = _param_dtype(draw, dtype, any_dtype=rms)
    grad = rms or _layer_param_grad(dtype, pdt)
    kw: dict[str, Any] = {}
    if draw(st.booleans()):
        kw["weight"] = draw(_param(norm, pdt, grad=grad))
    if not rms and draw(st.booleans()):
        kw["bias"] = draw(_param(norm, pdt, grad=grad))
    _weight_beside_bias(draw, kw, dtype, pdt, norm)
    if draw(st.booleans()):
        # (no eps far below the "tiny" regime's variance: with rstd ~1e4 the input
        # gradient is a 1e4-sized cancellation, whose float32 residue no rtol bounds)
        choices = [None, 1e-5, 1e-3, 0.1] if rms else [1e-5, 1e-3, 0.1]
        kw["eps"] = draw(st.sampled_from(choices))
    return Call((x, list(norm)), kw, seed=draw(seeds))


# ------------------------------------------------------------------------ group norm


@st.composite
def _group_call(
    draw: Draw, dtype: torch.dtype, *, ranks: tuple[int, ...] = (2, 3, 4, 5), empty: bool = True
) -> Call:
    rank = draw(st.sampled_from(ranks))
    groups = draw(st.integers(1, 4))
    per_group = draw(st.integers(0 if empty else 1, 6))
    if draw(st.integers(0, 9)) and per_group == 0:  # an empty channel dimension, rarely
        per_group = 1
    n = draw(st.integers(0 if empty else 1, 4))
    spatial = draw(shapes(rank - 2, rank - 2, 1, 5))
    if not _row_size_ok(per_group * math.prod(spatial), dtype):
        per_group = 4
    shape = (n, groups * per_group, *spatial)
    x = draw(tensors(shape, dtype, requires_grad=True, regimes=_regimes(dtype)))
    pdt = _param_dtype(draw, dtype)
    kw: dict[str, Any] = {}
    if draw(st.booleans()):
        kw["weight"] = draw(_param((shape[1],), pdt))
    if draw(st.booleans()):
        kw["bias"] = draw(_param((shape[1],), pdt))
    _weight_beside_bias(draw, kw, dtype, pdt, (shape[1],), always=True)
    if draw(st.booleans()):
        kw["eps"] = draw(st.sampled_from([1e-5, 1e-3, 0.1]))
    return Call((x, groups), kw, seed=draw(seeds))


@st.composite
def _one_value_call(draw: Draw, dtype: torch.dtype, *, group: bool) -> Call:
    """Rows (layer norm) or groups (group norm: as many groups as channels) of one value:
    the exact result is the bias; torch's rounding of it is what is compared."""
    x_shape: tuple[int, ...]
    if group:
        channels = draw(st.integers(1, 4))
        x_shape = (draw(st.integers(2, 5)), channels, *(1,) * draw(st.integers(0, 2)))
        norm: tuple[int, ...] = (channels,)
        args: tuple[Any, ...] = (channels,)
    else:
        norm = (1,) * draw(st.integers(1, 2))
        x_shape = (*draw(shapes(1, 2, 1, 5)), *norm)
        args = (list(norm),)
    x = draw(tensors(x_shape, dtype, regimes=_regimes(dtype, grad=False)))
    pdt = _param_dtype(draw, dtype)
    kw: dict[str, Any] = {}
    if draw(st.booleans()):
        kw["weight"] = draw(_param(norm, pdt))
    if draw(st.booleans()):
        kw["bias"] = draw(_param(norm, pdt))
    return Call((x, *args), kw)


# --------------------------------------------------------------------- memory formats


def _channels_last_input(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``fn`` on ``x`` in channels-last memory (gradients flow back to the drawn leaf)."""

    def run(x: Tensor, *args: Any, **kw: Any) -> Tensor:
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        return fn(x.contiguous(memory_format=fmt), *args, **kw)

    return run


def _format_of(fn: Callable[..., Tensor]) -> Callable[..., Any]:
    """The output of ``fn`` on a channels-last ``x``, and which memory format it has."""

    def run(x: Tensor, *args: Any, **kw: Any) -> Any:
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        out = fn(x.contiguous(memory_format=fmt), *args, **kw)
        return out.detach(), out.is_contiguous(memory_format=fmt), out.is_contiguous()

    return run


@st.composite
def _channels_last_trailing_call(draw: Draw, dtype: torch.dtype, *, rms: bool) -> Call:
    shape = draw(shapes(4, 5, 1, 4))
    norm = shape[-draw(st.integers(1, 2)) :]
    if not _row_size_ok(math.prod(norm), dtype):
        shape, norm = (*shape[:-1], 4), (4,)
    x = draw(
        tensors(shape, dtype, requires_grad=True, regimes=_regimes(dtype), layouts=("contiguous",))
    )
    pdt = _param_dtype(draw, dtype, any_dtype=rms)
    kw: dict[str, Any] = {}
    if draw(st.booleans()):
        kw["weight"] = draw(_param(norm, pdt, grad=rms or _layer_param_grad(dtype, pdt)))
    return Call((x, list(norm)), kw, seed=draw(seeds))


def _channels_last_group_call(dtype: torch.dtype) -> st.SearchStrategy[Call]:
    # (no empty inputs: torch gives them a layout that is neither format)
    return _group_call(dtype, ranks=(4, 5), empty=False).map(_contiguous_input)


def _contiguous_input(call: Call) -> Call:
    x = call.args[0]
    plain = TensorSpec(x.shape, x.dtype, x.seed, regime=x.regime, requires_grad=True)
    return Call((plain, *call.args[1:]), call.kwargs, seed=call.seed)


# --------------------------------------------------------------------------- modules


def _module_run(cls: str) -> Callable[..., Callable[..., Any]]:
    """Build ``ns.<cls>(*ctor, dtype=x.dtype, **kw)``, give its parameters seeded values,
    run forward and backward: output, gradients (input, parameters), state_dict, repr."""

    def make(ns: Any) -> Callable[..., Any]:
        def run(x: Tensor, ctor: tuple[Any, ...], kw: dict[str, Any], seed: int) -> Any:
            m = getattr(ns, cls)(*ctor, dtype=x.dtype, **kw)
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for p in m.parameters():
                    p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
            xi = x.detach().requires_grad_(True)
            out = m(xi)
            up = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
            grads = torch.autograd.grad(out, [xi, *m.parameters()], up)
            state = {k: v.clone() for k, v in m.state_dict().items()}
            return out.detach(), list(grads), state, repr(m)

        return run

    return make


@st.composite
def _layer_module_call(draw: Draw, dtype: torch.dtype, *, rms: bool) -> Call:
    call = draw(_trailing_call(dtype, rms=rms))
    x, norm = call.args
    shape: Any = norm[0] if len(norm) == 1 and draw(st.booleans()) else tuple(norm)
    kw: dict[str, Any] = {"elementwise_affine": draw(st.booleans())}
    if not rms:
        kw["bias"] = draw(st.booleans())
    if "eps" in call.kwargs:
        kw["eps"] = call.kwargs["eps"]
    return Call((x, (shape,), kw, draw(seeds)))


@st.composite
def _group_module_call(draw: Draw, dtype: torch.dtype) -> Call:
    call = draw(_group_call(dtype))
    x, groups = call.args
    kw = {"affine": draw(st.booleans())}
    if GROUP_NORM_BIAS:  # (torch's GroupNorm takes bias= from 2.13 on)
        kw["bias"] = draw(st.booleans())
    if "eps" in call.kwargs:
        kw["eps"] = call.kwargs["eps"]
    return Call((x, (groups, x.shape[1]), kw, draw(seeds)))


# ---------------------------------------------------------------------------- the table


def _row(name: str, ours: Any, theirs: Any, inputs: Any, **kw: Any) -> Case:
    return Case(name, ours, theirs, inputs, family=FAMILY, tol=_TOL, why=_WHY, **kw)


def _rms(fn: Callable[..., Tensor]) -> Callable[..., Any]:
    return quiet_dispatch_hint(fn)


#: name -> (ours, torch's, drawn calls, drawn calls with a 4-D/5-D input for the
#: channels-last rows): each function's rows are made from its entry
_FUNCTIONS: dict[str, tuple[Callable[..., Any], Callable[..., Any], Any, Any]] = {
    "layer_norm": (
        F.layer_norm,
        TF.layer_norm,
        lambda dt: _trailing_call(dt, rms=False),
        lambda dt: _channels_last_trailing_call(dt, rms=False),
    ),
    "rms_norm": (
        _rms(F.rms_norm),
        _rms(TF.rms_norm),
        lambda dt: _trailing_call(dt, rms=True),
        lambda dt: _channels_last_trailing_call(dt, rms=True),
    ),
    "group_norm": (F.group_norm, TF.group_norm, _group_call, _channels_last_group_call),
}

#: module class name -> drawn (input, constructor args, constructor kwargs, seed)
_MODULES: dict[str, Any] = {
    "LayerNorm": lambda dt: _layer_module_call(dt, rms=False),
    "RMSNorm": lambda dt: _layer_module_call(dt, rms=True),
    "GroupNorm": _group_module_call,
}

_PLAIN_CASES: list[Case] = [
    _row(name, ours, theirs, calls) for name, (ours, theirs, calls, _) in _FUNCTIONS.items()
]
_CHANNELS_LAST_CASES: list[Case] = [
    _row(f"{name}[channels_last]", _channels_last_input(ours), _channels_last_input(theirs), cl)
    for name, (ours, theirs, _, cl) in _FUNCTIONS.items()
]
_FORMAT_CASES: list[Case] = [
    _row(f"{name}[channels_last format]", _format_of(ours), _format_of(theirs), cl, backward=False)
    for name, (ours, theirs, _, cl) in _FUNCTIONS.items()
]
_ONE_VALUE_CASES: list[Case] = [
    _row(
        "layer_norm[one value per row]",
        F.layer_norm,
        TF.layer_norm,
        lambda dt: _one_value_call(dt, group=False),
        backward=False,
    ),
    _row(
        "group_norm[one value per group]",
        F.group_norm,
        TF.group_norm,
        lambda dt: _one_value_call(dt, group=True),
        backward=False,
    ),
]
_MODULE_CASES: list[Case] = [
    _row(
        f"{cls}[module]",
        _rms(_module_run(cls)(RN)),
        _rms(_module_run(cls)(torch.nn)),
        calls,
        backward=False,
        # (16-bit LayerNorm parameters: see _layer_param_grad; the functional rows cover
        # its 16-bit output and input gradient)
        dtypes=(torch.float64, torch.float32) if cls == "LayerNorm" else FLOAT_DTYPES,
    )
    for cls, calls in _MODULES.items()
]


def _autocast_rows(plain: list[Case]) -> list[Case]:
    """The rows under torch.autocast: on CPU none of the three is listed (arguments as
    they are); on CUDA layer and group norm run in float32, RMS norm as it is."""
    # (mixed=False: the drawn calls already pair 16-bit inputs with float32 parameters,
    # in the combinations torch's backward can take)
    return [
        autocast.autocast_case(case, device, dtype, mixed=False)
        for case in plain
        for device, dtype in autocast.RUNS
        if device in case.devices
    ]


NORMALIZATION_CASES: list[Case] = [
    *_PLAIN_CASES,
    *_CHANNELS_LAST_CASES,
    *_FORMAT_CASES,
    *_ONE_VALUE_CASES,
    *_MODULE_CASES,
    *_autocast_rows(_PLAIN_CASES),
]

__all__ = ["NORMALIZATION_CASES", "NORMALIZATION_ERROR_CASES"]
