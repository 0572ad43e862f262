"""Parity table for the regularizers: the dropout family (bit-identical on CPU, incl. the
random generator's state afterwards), batch norm (functional and modules over several
train/eval steps), the same rows under ``torch.autocast``, the alpha-dropout modules'
``inplace`` (ignored, as torch's), and their bad-input errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as TF
from hypothesis import strategies as st
from torch import Tensor

import reimpl.nn as RN
import reimpl.nn.functional as F
from reimpl_parity.cases import _autocast as autocast
from reimpl_parity.compare import EXACT
from reimpl_parity.harness import Case, fixed_call_case
from reimpl_parity.strategies import Call, TensorSpec, seeds, shapes, tensors

Draw = Callable[[st.SearchStrategy[Any]], Any]
_ALL_EXACT = {dt: EXACT for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16)}

# ------------------------------------------------------------------------------- dropout

#: rank range drawn per function (wrong ranks included: errors and warnings are compared)
_DROPOUT_RANKS = {
    "dropout": (0, 4),
    "alpha_dropout": (0, 4),
    "feature_alpha_dropout": (0, 5),
    "dropout1d": (1, 4),
    "dropout2d": (1, 5),
    "dropout3d": (0, 6),
}


def _seeded(fn: Callable[..., Tensor]) -> Callable[..., Any]:
    """Seed the default generator, call, and return (output, generator state afterwards).

    ``inplace=True`` runs on a clone of the input (so gradients flow through the in-place
    path to the leaf) and also reports whether the result *is* that clone.
    """

    def run(x: Tensor, *args: Any, rng: int, **kwargs: Any) -> Any:
        torch.manual_seed(rng)
        if kwargs.get("inplace"):
            y = x.clone()
            out = fn(y, *args, **kwargs)
            return out, out is y, y, torch.get_rng_state()
        out = fn(x, *args, **kwargs)
        return out, torch.get_rng_state()

    return run


@st.composite
def _dropout_call(draw: Draw, dtype: torch.dtype, fn: str) -> Call:
    lo, hi = _DROPOUT_RANKS[fn]
    shape = draw(shapes(lo, hi, 0, 5))
    x = draw(tensors(shape, dtype, requires_grad=True))
    p = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0, 1 / 3]) | st.floats(0.0, 1.0))
    kw: dict[str, Any] = {"rng": draw(seeds)}
    if draw(st.booleans()):
        kw["training"] = draw(st.sampled_from([True, True, False]))
    if draw(st.booleans()):
        kw["inplace"] = draw(st.booleans())
    return Call((x, p), kw, seed=draw(seeds))


def _dropout_case(fn: str) -> Case:
    return Case(
        f"{fn}[seeded]",
        _seeded(getattr(F, fn)),
        _seeded(getattr(TF, fn)),
        lambda dt: _dropout_call(dt, fn),
        family="regularizers",
        tol=_ALL_EXACT,
        why="same random draws and scaling arithmetic as torch's CPU kernel: bit-identical",
        backward=False,  # grads are checked inside the tuple-returning wrapper below
        devices=("cpu",),
    )


def _with_grad(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a seeded dropout and add the input gradient for a fixed upstream gradient."""

    def run(x: Tensor, *args: Any, rng: int, **kwargs: Any) -> Any:
        res = fn(x, *args, rng=rng, **kwargs)
        out = res[0]
        grad = None
        if out.requires_grad:
            g = torch.Generator().manual_seed(rng)
            up = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
            (grad,) = torch.autograd.grad(out, x, up, allow_unused=True)
        return (*res, grad)

    return run


def _dropout_grad_case(fn: str) -> Case:
    base = _dropout_case(fn)
    return Case(
        f"{fn}[seeded]",
        _with_grad(base.ours),
        _with_grad(base.theirs),
        base.inputs,
        family="regularizers",
        tol=_ALL_EXACT,
        why=base.why,
        backward=False,
        devices=("cpu",),
    )


# ---------------------------------------------------------------------------- batch norm

#: torch reduces (and, in backward, sums g·x̂) in its own order; 16-bit parameters make it
#: round the batch statistics to 16 bits, and its 16-bit running statistics too.
_BN_TOL = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-2, 5e-3),
    torch.bfloat16: (5e-2, 5e-2),
}
_BN_WHY = "reductions in another order than torch's kernel; 16-bit statistics rounding"
_HALF = (torch.float16, torch.bfloat16)


@st.composite
def _bn_shape(
    draw: Draw, dtype: torch.dtype, ranks: tuple[int, ...] = (2, 3, 4, 5)
) -> tuple[int, ...]:
    rank = draw(st.sampled_from(ranks))
    c = draw(st.integers(1, 4))
    spatial = draw(shapes(rank - 2, rank - 2, 1, 4))
    per_channel = 1
    for s in spatial:
        per_channel *= s
    # ≥ 4 values per channel (2 in float64): with 2 or 3 values the normalized output and
    # its gradient are dominated by rounding (x̂ = ±1), in torch as in any implementation.
    least = 2 if dtype == torch.float64 else 4
    n = draw(st.integers(max(1, -(-least // per_channel)), 6))
    return (n, c, *spatial)


def _param_dtype(draw: Draw, dtype: torch.dtype) -> torch.dtype:
    return draw(st.sampled_from([dtype, torch.float32])) if dtype in _HALF else dtype


def _param(c: int, dtype: torch.dtype) -> st.SearchStrategy[TensorSpec]:
    return tensors((c,), dtype, requires_grad=True, regimes=("normal",), layouts=("contiguous",))


@st.composite
def _bn_call(draw: Draw, dtype: torch.dtype) -> Call:
    shape = draw(_bn_shape(dtype))
    c = shape[1]
    layouts = ("contiguous", "transposed", "strided")
    x = draw(
        tensors(shape, dtype, requires_grad=True, regimes=("normal", "large"), layouts=layouts)
    )
    pdt = _param_dtype(draw, dtype)
    training = draw(st.booleans())
    tracked = not training or draw(st.booleans())
    rm = draw(tensors((c,), pdt, layouts=("contiguous",), regimes=("normal",))) if tracked else None
    rv = (
        draw(tensors((c,), pdt, kind="positive", low=0.2, high=3.0, layouts=("contiguous",)))
        if tracked
        else None
    )
    affine = draw(st.sampled_from(["both", "weight", "none"]))
    # contiguous weight/bias only: torch's CPU eval backward reads a strided weight as if
    # it were contiguous (wrong input gradient; a torch bug, see the README's differences)
    w = draw(_param(c, pdt)) if affine != "none" else None
    b = draw(_param(c, pdt)) if affine == "both" else None
    kw: dict[str, Any] = {"training": training}
    if draw(st.booleans()):
        kw["momentum"] = draw(st.sampled_from([0.1, 0.0, 1.0, 0.5]))
    if draw(st.booleans()):
        kw["eps"] = draw(st.sampled_from([1e-5, 1e-3, 0.1]))
    return Call((x, rm, rv, w, b), kw, seed=draw(seeds))


def _with_stats(fn: Callable[..., Tensor]) -> Callable[..., Any]:
    def run(x: Tensor, rm: Tensor | None, rv: Tensor | None, *args: Any, **kw: Any) -> Any:
        out = fn(x, rm, rv, *args, **kw)
        return out.detach(), rm, rv

    return run


def _memory_format(fn: Callable[..., Tensor]) -> Callable[..., Any]:
    """Output values and whether it is channels_last, for a channels_last input."""

    def run(x: Tensor, *args: Any, **kw: Any) -> Any:
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        out = fn(x.contiguous(memory_format=fmt), *args, **kw)
        return out, out.is_contiguous(memory_format=fmt), out.is_contiguous()

    return run


@st.composite
def _bn_cl_call(draw: Draw, dtype: torch.dtype) -> Call:
    shape = draw(_bn_shape(dtype, ranks=(4, 5)))
    x = draw(tensors(shape, dtype, regimes=("normal",)))
    c = shape[1]
    pdt = _param_dtype(draw, dtype)
    rm = draw(tensors((c,), pdt, layouts=("contiguous",), regimes=("normal",)))
    rv = draw(tensors((c,), pdt, kind="positive", low=0.2, high=3.0, layouts=("contiguous",)))
    return Call((x, rm, rv), {"training": draw(st.booleans())})


_BN_MODULES = {1: "BatchNorm1d", 2: "BatchNorm2d", 3: "BatchNorm3d"}


def _bn_module_run(ns: Any) -> Callable[..., Any]:
    """Build ``ns.BatchNormNd``, run train/eval steps, return outputs, grads, state_dict."""

    def run(x: Tensor, nd: int, kwargs: dict[str, Any], plan: tuple[bool, ...], seed: int) -> Any:
        m = getattr(ns, _BN_MODULES[nd])(x.size(1), dtype=x.dtype, **kwargs)
        if m.weight is not None:
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=torch.float64))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=torch.float64))
        results = []
        for i, train in enumerate(plan):
            m.train(train)
            xi = (x * (1 + 0.5 * i) + i).detach().requires_grad_(True)
            out = m(xi)
            g = torch.Generator().manual_seed(seed + i)
            up = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
            params = [p for p in (m.weight, m.bias) if p is not None]
            grads = torch.autograd.grad(out, [xi, *params], up)
            results.append((out.detach(), list(grads)))
        state = {k: v.clone() for k, v in m.state_dict().items()}
        return results, state, repr(m)

    return run


@st.composite
def _bn_module_call(draw: Draw, dtype: torch.dtype) -> Call:
    nd = draw(st.sampled_from([1, 1, 2, 3]))
    shape = draw(_bn_shape(dtype, ranks=(2, 3) if nd == 1 else (nd + 2,)))
    x = draw(tensors(shape, dtype, regimes=("normal",), layouts=("contiguous",)))
    kw = {
        "momentum": draw(st.sampled_from([0.1, None, 0.5])),
        "affine": draw(st.booleans()),
        "track_running_stats": draw(st.sampled_from([True, True, False])),
        "eps": draw(st.sampled_from([1e-5, 1e-3])),
    }
    plan = tuple(draw(st.lists(st.booleans(), min_size=1, max_size=3)))
    # the first step trains, so eval steps in the plan use updated statistics
    return Call((x, nd, kw, (True, *plan), draw(seeds)))


# ---------------------------------------------------------------------------- the table


def _alpha_module_inplace(ns: Any, cls: str) -> Callable[..., Any]:
    """``cls(p, inplace=True)`` in training on a clone of ``x``: the output, whether it is
    that clone, the clone afterwards (torch's alpha-dropout modules ignore ``inplace``)."""

    def run(x: Tensor, p: float, rng: int) -> Any:
        y = x.clone()
        torch.manual_seed(rng)
        out = getattr(ns, cls)(p, inplace=True)(y)
        return out, out is y, y, torch.get_rng_state()

    return run


@st.composite
def _alpha_module_call(draw: Draw, dtype: torch.dtype) -> Call:
    x = draw(tensors(draw(shapes(2, 4, 1, 5)), dtype))
    return Call((x, draw(st.sampled_from([0.2, 0.5, 0.9])), draw(seeds)))


_ALPHA_MODULE_CASES = [
    Case(
        f"{cls}(inplace=True)",
        _alpha_module_inplace(RN, cls),
        _alpha_module_inplace(torch.nn, cls),
        _alpha_module_call,
        family="regularizers",
        tol=_ALL_EXACT,
        why="same random draws and arithmetic as torch's CPU kernel: bit-identical",
        backward=False,
        devices=("cpu",),
    )
    for cls in ("AlphaDropout", "FeatureAlphaDropout")
]

_PLAIN_CASES: list[Case] = [
    *(_dropout_grad_case(fn) for fn in _DROPOUT_RANKS),
    Case(
        "batch_norm",
        F.batch_norm,
        TF.batch_norm,
        _bn_call,
        family="regularizers",
        tol=_BN_TOL,
        why=_BN_WHY,
    ),
    Case(
        "batch_norm[running stats]",
        _with_stats(F.batch_norm),
        _with_stats(TF.batch_norm),
        _bn_call,
        family="regularizers",
        tol=_BN_TOL,
        why=_BN_WHY,
        backward=False,
    ),
    Case(
        "batch_norm[channels_last]",
        _memory_format(F.batch_norm),
        _memory_format(TF.batch_norm),
        _bn_cl_call,
        family="regularizers",
        tol=_BN_TOL,
        why=_BN_WHY,
        backward=False,
    ),
    Case(
        "BatchNormNd[train/eval steps]",
        _bn_module_run(RN),
        _bn_module_run(torch.nn),
        _bn_module_call,
        family="regularizers",
        tol=_BN_TOL,
        why=_BN_WHY,
        backward=False,
    ),
]


def _autocast_rows() -> list[Case]:
    """Under torch.autocast: dropout (CPU, bit-identical) and batch norm (CPU and CUDA)
    are on no autocast list, so they take their arguments as they are."""
    rows = []
    for case in _PLAIN_CASES:
        for device, dtype in autocast.RUNS:
            if device in case.devices:
                # batch norm draws its own mixed (16-bit input, float32 statistics) calls
                mixed = "dropout" in case.name
                rows.append(autocast.autocast_case(case, device, dtype, mixed=mixed))
    return rows


REGULARIZER_CASES: list[Case] = [*_PLAIN_CASES, *_ALPHA_MODULE_CASES, *_autocast_rows()]

# ---------------------------------------------------------------------------- bad input


def _t(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, **kw: Any) -> TensorSpec:
    return TensorSpec(tuple(shape), dtype, seed=0, **kw)


def _ones(c: int, dtype: torch.dtype = torch.float32) -> TensorSpec:
    return TensorSpec((c,), dtype, seed=0, kind="fill", low=1)


def _error_case(
    name: str, ours: Callable[..., Any], theirs: Callable[..., Any], *args: Any, **kwargs: Any
) -> Case:
    return fixed_call_case(name, ours, theirs, "regularizer-errors", *args, **kwargs)


def _fn_error(name: str, fn: str, *args: Any, **kwargs: Any) -> Case:
    return _error_case(f"{fn}:{name}", getattr(F, fn), getattr(TF, fn), *args, **kwargs)


def _module_error(name: str, cls: str, ctor: tuple[Any, ...], *args: Any, **kwargs: Any) -> Case:
    def make(ns: Any) -> Callable[..., Any]:
        def run(*a: Any, **kw: Any) -> Any:
            return getattr(ns, cls)(*ctor)(*a, **kw)

        return run

    return _error_case(f"{cls}:{name}", make(RN), make(torch.nn), *args, **kwargs)


def _ctor_error(name: str, cls: str, *ctor: Any, **ctor_kw: Any) -> Case:
    def make(ns: Any) -> Callable[..., Any]:
        return lambda: getattr(ns, cls)(*ctor, **ctor_kw)

    return _error_case(f"{cls}():{name}", make(RN), make(torch.nn))


_X = _t((4, 3))
_X4 = _t((2, 3, 4, 5))

REGULARIZER_ERROR_CASES: list[Case] = [
    *(_fn_error("p > 1", fn, _X4, 1.5) for fn in _DROPOUT_RANKS),
    *(_fn_error("p < 0", fn, _X4, -0.1) for fn in _DROPOUT_RANKS),
    _fn_error("p = nan", "dropout", _X, float("nan")),
    _fn_error("4-D input", "dropout1d", _X4, 0.5),
    _fn_error("1-D input", "dropout1d", _t((5,)), 0.5),
    _fn_error("1-D input, training", "dropout2d", _t((5,)), 0.5),
    _fn_error("0-D input, training", "dropout3d", _t(()), 0.5),
    _fn_error("1-D input, training", "feature_alpha_dropout", _t((5,)), 0.5, True),
    _fn_error("integer input", "dropout", _t((4,), torch.int64, kind="int", high=3), 0.5),
    _fn_error(
        "integer input", "alpha_dropout", _t((4,), torch.int64, kind="int", high=3), 0.5, True
    ),
    *(
        _ctor_error(f"p={p}", cls, p)
        for cls in ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout")
        for p in (-0.5, 2.0)
    ),
    _fn_error("one value per channel", "batch_norm", _t((1, 3)), None, None, training=True),
    _fn_error(
        "one value per channel (3-D)",
        "batch_norm",
        _t((1, 3, 1)),
        _t((3,)),
        _ones(3),
        training=True,
    ),
    _fn_error("channels vs running_mean", "batch_norm", _X, _t((4,)), _ones(4), training=True),
    _fn_error("channels vs running_mean, eval", "batch_norm", _X, _t((4,)), _ones(4)),
    _fn_error("channels vs weight", "batch_norm", _X, _t((3,)), _ones(3), _ones(4)),
    _fn_error("channels vs bias", "batch_norm", _X, _t((3,)), _ones(3), None, _t((2,))),
    _fn_error("eval without statistics", "batch_norm", _X, None, None),
    _fn_error("eval without running_var", "batch_norm", _X, _t((3,)), None),
    _fn_error("only running_mean", "batch_norm", _X, _t((3,)), None, training=True),
    _fn_error("eps 0 in training", "batch_norm", _X, None, None, training=True, eps=0.0),
    _fn_error("negative eps", "batch_norm", _X, _t((3,)), _ones(3), eps=-1.0),
    _fn_error(
        "integer input",
        "batch_norm",
        _t((4, 3), torch.int64, kind="int", high=3),
        None,
        None,
        training=True,
    ),
    _fn_error(
        "float64 statistics", "batch_norm", _X, _t((3,), torch.float64), _ones(3, torch.float64)
    ),
    _fn_error(
        "float64 input, float32 weight",
        "batch_norm",
        _t((4, 3), torch.float64),
        None,
        None,
        _ones(3),
        training=True,
    ),
    _fn_error(
        "float16 input, float32 weight, float16 statistics",
        "batch_norm",
        _t((4, 3), torch.float16),
        _t((3,), torch.float16),
        _ones(3, torch.float16),
        _ones(3),
        training=True,
    ),
    _fn_error("1-D input", "batch_norm", _t((3,)), _t((3,)), _ones(3), training=True),
    _fn_error("1-D input, no statistics", "batch_norm", _t((5,)), None, None, training=True),
    _fn_error("0-D input", "batch_norm", _t(()), None, None, training=True),
    _fn_error("0-D input, eval", "batch_norm", _t(()), _t((3,)), _ones(3)),
    _module_error("3-D input", "BatchNorm2d", (3,), _t((2, 3, 4))),
    _module_error("4-D input", "BatchNorm1d", (3,), _X4),
    _module_error("1-D input", "BatchNorm1d", (3,), _t((3,))),
    _module_error("4-D input", "BatchNorm3d", (3,), _X4),
    _module_error("num_features mismatch", "BatchNorm2d", (5,), _X4),
    _module_error(
        "num_features mismatch, untracked", "BatchNorm1d", (5, 1e-5, 0.1, True, False), _X
    ),
    _module_error("one value per channel", "BatchNorm1d", (3,), _t((1, 3))),
    _module_error("one value per channel", "BatchNorm2d", (3,), _t((1, 3, 1, 1))),
]
