"""Parity table for instance norm, local response norm and the lazy norm modules: the
functional forms (values, gradients, running statistics, memory formats, every dtype
combination torch's CPU kernel takes or refuses), the modules over train/eval steps (incl.
unbatched inputs and torch's channel-count warning), state_dicts moved both ways between
reimpl's and torch's modules (and an unversioned old checkpoint), the lazy modules from
uninitialized to materialized, the same rows under ``torch.autocast``, and bad input."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as TF
from hypothesis import strategies as st
from torch import Tensor

import reimpl.nn as RN
import reimpl.nn.functional as F
from reimpl_parity.cases import _autocast as autocast
from reimpl_parity.cases.regularizers import (
    _BN_TOL,
    _BN_WHY,
    _error_case,
    _memory_format,
    _param,
    _param_dtype,
    _t,
    _with_stats,
)
from reimpl_parity.compare import EXACT
from reimpl_parity.harness import Case
from reimpl_parity.strategies import FLOAT_DTYPES, Call, TensorSpec, seeds, shapes, tensors

Draw = Callable[[st.SearchStrategy[Any]], Any]
_FAMILY = "instance_norm"
_ERRORS = "instance_norm-errors"

# ---------------------------------------------------------------------- instance norm


@st.composite
def _in_shape(
    draw: Draw, dtype: torch.dtype, ranks: tuple[int, ...] = (3, 4, 5), empty: bool = False
) -> list[int]:
    """(N, C, *spatial) with enough spatial elements for statistics that are not dominated
    by rounding (as batch norm's rows: 2 in float64, else 4); N = 0 only if ``empty``
    (torch's CPU kernel fails on an empty batch with affine parameters: unit-tested)."""
    rank = draw(st.sampled_from(ranks))
    spatial = list(draw(shapes(rank - 2, rank - 2, 1, 5)))
    least = 2 if dtype == torch.float64 else 4
    rest = 1
    for s in spatial[1:]:
        rest *= s
    spatial[0] = max(spatial[0], -(-least // rest))
    return [draw(st.integers(0 if empty else 1, 4)), draw(st.integers(1, 4)), *spatial]


def _stats(draw: Draw, c: int, dtype: torch.dtype) -> tuple[TensorSpec, TensorSpec]:
    rm = draw(tensors((c,), dtype, layouts=("contiguous",), regimes=("normal",)))
    rv = draw(tensors((c,), dtype, kind="positive", low=0.2, high=3.0, layouts=("contiguous",)))
    return rm, rv


@st.composite
def _in_call(draw: Draw, dtype: torch.dtype) -> Call:
    affine = draw(st.sampled_from(["both", "weight", "bias", "none"]))
    shape = draw(_in_shape(dtype, empty=affine == "none"))
    c = shape[1]
    layouts = ("contiguous", "transposed", "strided")
    x = draw(
        tensors(shape, dtype, requires_grad=True, regimes=("normal", "large"), layouts=layouts)
    )
    pdt = _param_dtype(draw, dtype)
    use_input_stats = draw(st.booleans())
    rm, rv = _stats(draw, c, pdt) if not use_input_stats or draw(st.booleans()) else (None, None)
    w = draw(_param(c, pdt)) if affine in ("both", "weight") else None
    b = draw(_param(c, pdt)) if affine in ("both", "bias") else None
    kw: dict[str, Any] = {}
    if not use_input_stats or draw(st.booleans()):
        kw["use_input_stats"] = use_input_stats
    if draw(st.booleans()):
        kw["momentum"] = draw(st.sampled_from([0.1, 0.0, 1.0, 0.5]))
    if draw(st.booleans()):
        kw["eps"] = draw(st.sampled_from([1e-5, 1e-3, 0.1]))
    return Call((x, rm, rv, w, b), kw, seed=draw(seeds))


@st.composite
def _in_cl_call(draw: Draw, dtype: torch.dtype) -> Call:
    shape = draw(_in_shape(dtype, ranks=(4, 5)))
    x = draw(tensors(shape, dtype, regimes=("normal",)))
    rm, rv = _stats(draw, shape[1], _param_dtype(draw, dtype))
    return Call((x, rm, rv), {"use_input_stats": draw(st.booleans())})


_DTYPE_CHOICES = (None, *FLOAT_DTYPES)


@st.composite
def _in_dtype_call(draw: Draw, dtype: torch.dtype) -> Call:
    """Any dtype (or none) for each of weight, bias and the running statistics."""
    shape = draw(_in_shape(dtype, ranks=(3, 4)))
    c = shape[1]
    x = draw(tensors(shape, dtype, regimes=("normal",), layouts=("contiguous",)))
    kinds = {"real": (0.0, 1.0), "positive": (0.2, 3.0)}

    def one(kind: str) -> TensorSpec | None:
        dt = draw(st.sampled_from(_DTYPE_CHOICES))
        if dt is None:
            return None
        lo, hi = kinds[kind]
        return draw(tensors((c,), dt, kind=kind, low=lo, high=hi, layouts=("contiguous",)))

    args = (x, one("real"), one("positive"), one("positive"), one("real"))
    return Call(args, {"use_input_stats": draw(st.booleans()), "momentum": 0.3})


_IN_MODULES = {1: "InstanceNorm1d", 2: "InstanceNorm2d", 3: "InstanceNorm3d"}


def _fill(m: torch.nn.Module, seed: int) -> None:
    """Random affine parameters and running statistics (same on both sides)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in m.state_dict().items():
            if t.is_floating_point():
                v = torch.rand(t.shape, generator=g, dtype=torch.float64) + 0.5
                t.copy_(v if name.endswith(("weight", "running_var")) else v - 1)


def _steps(m: torch.nn.Module, x: Tensor, plan: tuple[bool, ...], seed: int) -> list[Any]:
    """Train/eval forward steps on shifted copies of ``x``: outputs and gradients."""
    results = []
    for i, train in enumerate(plan):
        m.train(train)
        xi = (x * (1 + 0.5 * i) + i).detach().requires_grad_(True)
        out = m(xi)
        g = torch.Generator().manual_seed(seed + i)
        up = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
        params = [p for p in m.parameters() if p.requires_grad]
        grads = torch.autograd.grad(out, [xi, *params], up)
        results.append((out.detach(), list(grads)))
    return results


def _in_module_run(ns: Any) -> Callable[..., Any]:
    def run(x: Tensor, nd: int, features: int, kw: dict[str, Any], plan: Any, seed: int) -> Any:
        m = getattr(ns, _IN_MODULES[nd])(features, dtype=x.dtype, **kw)
        _fill(m, seed)
        results = _steps(m, x, plan, seed)
        return results, {k: v.clone() for k, v in m.state_dict().items()}, repr(m)

    return run


@st.composite
def _in_module_call(draw: Draw, dtype: torch.dtype) -> Call:
    nd = draw(st.sampled_from([1, 2, 2, 3]))
    shape = draw(_in_shape(dtype, ranks=(nd + 2,)))
    if draw(st.booleans()):
        shape = shape[1:]  # unbatched
    kw = {
        "momentum": draw(st.sampled_from([0.1, None, 0.5])),
        "affine": draw(st.booleans()),
        "track_running_stats": draw(st.booleans()),
        "eps": draw(st.sampled_from([1e-5, 1e-3])),
    }
    c = shape[-nd - 1]
    # without affine torch warns that num_features differs from the channels (and uses none)
    features = c if kw["affine"] else draw(st.sampled_from([c, c + 1]))
    x = draw(tensors(tuple(shape), dtype, regimes=("normal",), layouts=("contiguous",)))
    plan = (True, *draw(st.lists(st.booleans(), min_size=1, max_size=3)))
    return Call((x, nd, features, kw, plan, draw(seeds)))


def _swap_run(src: Any, dst: Any) -> Callable[..., Any]:
    """Train ``src``'s module a step, load its state_dict into a fresh ``dst`` module, and
    run that in eval (``cls`` a lazy class: ``dst`` starts uninitialized)."""

    def run(x: Tensor, cls: str, kw: dict[str, Any], seed: int) -> Any:
        lazy = cls.startswith("Lazy")
        a = getattr(src, cls)(**kw) if lazy else getattr(src, cls)(x.size(1), **kw)
        if not lazy:
            _fill(a, seed)
        _steps(a, x, (True,), seed)
        b = getattr(dst, cls)(**kw) if lazy else getattr(dst, cls)(x.size(1), **kw)
        b.load_state_dict(a.state_dict())
        out = _steps(b, x, (False, True), seed)
        return out, {k: v.clone() for k, v in b.state_dict().items()}, type(b).__name__

    return run


_SWAP_CLASSES = (
    "InstanceNorm1d",
    "InstanceNorm2d",
    "LazyInstanceNorm2d",
    "LazyBatchNorm2d",
    "LazyInstanceNorm3d",
    "LazyBatchNorm1d",
)


@st.composite
def _swap_call(draw: Draw, dtype: torch.dtype) -> Call:
    cls = draw(st.sampled_from(_SWAP_CLASSES))
    nd = 3 if cls.endswith("3d") else 2 if cls.endswith("2d") else 1
    x = draw(tensors(tuple(draw(_in_shape(dtype, ranks=(nd + 2,)))), dtype, regimes=("normal",)))
    kw = {"affine": draw(st.booleans()), "track_running_stats": draw(st.booleans())}
    return Call((x, cls, {**kw, "dtype": dtype}, draw(seeds)))


def _lazy_run(ns: Any) -> Callable[..., Any]:
    """An uninitialized lazy module: its state_dict (entry types) and repr; then steps,
    the class it became, its state_dict and repr."""

    def run(x: Tensor, cls: str, kw: dict[str, Any], plan: Any, seed: int) -> Any:
        m = getattr(ns, cls)(**kw)
        before = {k: type(v).__name__ for k, v in m.state_dict().items()}
        first = (repr(m), before)
        results = _steps(m, x, plan, seed)
        state = {k: v.clone() for k, v in m.state_dict().items()}
        return first, results, type(m).__name__, state, repr(m)

    return run


_LAZY = [f"Lazy{kind}Norm{nd}d" for kind in ("Batch", "Instance") for nd in (1, 2, 3)]


@st.composite
def _lazy_call(draw: Draw, dtype: torch.dtype) -> Call:
    cls = draw(st.sampled_from(_LAZY))
    nd = 3 if cls.endswith("3d") else 2 if cls.endswith("2d") else 1
    shape = draw(_in_shape(dtype, ranks=(nd + 2,)))
    shape[0] = max(shape[0], 2)  # batch norm's training statistics need a batch
    kw = {"dtype": dtype, "eps": draw(st.sampled_from([1e-5, 1e-3]))}
    for key in ("affine", "track_running_stats"):
        if draw(st.booleans()):
            kw[key] = draw(st.booleans())
    x = draw(tensors(tuple(shape), dtype, regimes=("normal",), layouts=("contiguous",)))
    plan = (True, *draw(st.lists(st.booleans(), min_size=0, max_size=2)))
    return Call((x, cls, kw, plan, draw(seeds)))


def _old_checkpoint(ns: Any) -> Callable[..., Any]:
    """Load a state_dict without version metadata (a pre-0.4 checkpoint) holding running
    statistics into an instance norm that does (not) track them."""

    def run(track: bool) -> Any:
        sd = torch.nn.InstanceNorm2d(3, track_running_stats=True).state_dict()
        sd._metadata = {"": {}}  # type: ignore[attr-defined]
        m = ns.InstanceNorm2d(3, track_running_stats=track)
        m.load_state_dict(sd)
        return dict(m.state_dict())

    return run


# ------------------------------------------------------------------ local response norm


@st.composite
def _lrn_call(draw: Draw, dtype: torch.dtype) -> Call:
    rank = draw(st.sampled_from([3, 3, 4, 4, 5, 6]))
    shape = (draw(st.integers(0, 3)), draw(st.integers(1, 6)), *draw(shapes(rank - 2, rank - 2)))
    # torch views a channels-swapped 5-D-and-up square (transposed) as one it cannot view,
    # and raises; that layout is in the unit tests, as a difference
    layouts = ("contiguous", "strided", "transposed") if rank <= 4 else ("contiguous", "strided")
    x = draw(tensors(shape, dtype, requires_grad=True, layouts=layouts))
    kw: dict[str, Any] = {}
    if draw(st.booleans()):
        kw["alpha"] = draw(st.sampled_from([1e-4, 0.5, 2.0]))
    if draw(st.booleans()):
        kw["beta"] = draw(st.sampled_from([0.75, 0.5, 1.0, 2.0]))
    if draw(st.booleans()):
        kw["k"] = draw(st.sampled_from([1.0, 2.0, 0.5]))
    return Call((x, draw(st.integers(1, 8))), kw, seed=draw(seeds))


def _lrn_formats(fn: Callable[..., Tensor]) -> Callable[..., Any]:
    def run(x: Tensor, size: int, fmt: str, **kw: Any) -> Any:
        layout = {"cl": torch.channels_last, "cl3d": torch.channels_last_3d}.get(fmt)
        y = x.contiguous(memory_format=layout) if layout is not None else x
        out = fn(y, size, **kw)
        return out, out.stride()

    return run


@st.composite
def _lrn_format_call(draw: Draw, dtype: torch.dtype) -> Call:
    rank = draw(st.sampled_from([4, 5]))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 5)), *draw(shapes(rank - 2, rank - 2, 1)))
    layouts = ("contiguous", "transposed") if rank == 4 else ("contiguous",)  # (see above)
    x = draw(tensors(shape, dtype, regimes=("normal",), layouts=layouts))
    fmt = draw(st.sampled_from(["cl" if rank == 4 else "cl3d", "as drawn"]))
    return Call((x, draw(st.integers(1, 6)), fmt))


def _lrn_module(ns: Any) -> Callable[..., Any]:
    def run(x: Tensor, size: int, **kw: Any) -> Any:
        m = ns.LocalResponseNorm(size, **kw)
        return m(x), repr(m)

    return run


# ------------------------------------------------------------------------------ table

_IN_WHY = _BN_WHY + " (instance norm is batch norm on the (1, N·C, *) view)"
_LRN_WHY = "the same elementwise ops as torch's composite; the window summed in pool order"


def _case(name: str, ours: Any, theirs: Any, inputs: Any, **kw: Any) -> Case:
    kw.setdefault("tol", _BN_TOL)
    kw.setdefault("why", _IN_WHY)
    return Case(name, ours, theirs, inputs, family=_FAMILY, **kw)


_PLAIN_CASES: list[Case] = [
    _case("instance_norm", F.instance_norm, TF.instance_norm, _in_call),
    _case(
        "instance_norm[running stats]",
        _with_stats(F.instance_norm),
        _with_stats(TF.instance_norm),
        _in_call,
        backward=False,
    ),
    _case(
        "instance_norm[channels_last]",
        _memory_format(F.instance_norm),
        _memory_format(TF.instance_norm),
        _in_cl_call,
        backward=False,
    ),
    _case(
        "InstanceNormNd[train/eval steps]",
        _in_module_run(RN),
        _in_module_run(torch.nn),
        _in_module_call,
        backward=False,
    ),
    _case("local_response_norm", F.local_response_norm, TF.local_response_norm, _lrn_call),
    _case(
        "local_response_norm[memory format]",
        _lrn_formats(F.local_response_norm),
        _lrn_formats(TF.local_response_norm),
        _lrn_format_call,
        tol={dt: EXACT for dt in (torch.float16, torch.bfloat16)},
        why=_LRN_WHY + ": bit-identical on CPU in 16 bits",
        backward=False,
    ),
    _case(
        "LocalResponseNorm",
        _lrn_module(RN),
        _lrn_module(torch.nn),
        _lrn_call,
        backward=False,
    ),
]

_CPU_CASES: list[Case] = [
    # torch's CPU rule for which dtypes go together; CUDA's kernels have their own
    _case(
        "instance_norm[dtype combinations]",
        _with_stats(F.instance_norm),
        _with_stats(TF.instance_norm),
        _in_dtype_call,
        backward=False,
        devices=("cpu",),
    ),
    _case(
        "state_dict reimpl -> torch",
        _swap_run(RN, torch.nn),
        _swap_run(torch.nn, torch.nn),
        _swap_call,
        backward=False,
        devices=("cpu",),
    ),
    _case(
        "state_dict torch -> reimpl",
        _swap_run(torch.nn, RN),
        _swap_run(torch.nn, torch.nn),
        _swap_call,
        backward=False,
        devices=("cpu",),
    ),
    _case(
        "LazyNorm[uninitialized -> materialized]",
        _lazy_run(RN),
        _lazy_run(torch.nn),
        _lazy_call,
        backward=False,
        devices=("cpu",),
    ),
    _case(
        "InstanceNorm2d[unversioned checkpoint]",
        _old_checkpoint(RN),
        _old_checkpoint(torch.nn),
        lambda dt: st.builds(Call, st.tuples(st.booleans())),
        dtypes=(torch.float32,),
        backward=False,
        devices=("cpu",),
    ),
]


def _autocast_rows() -> list[Case]:
    """Instance norm is on no autocast list (arguments as they are; its own draws mix
    16-bit inputs with float32 parameters); local response norm follows torch's composite
    op by op (see its module), so its rows draw plain inputs."""
    rows = []
    for case in _PLAIN_CASES:
        for device, dtype in autocast.RUNS:
            rows.append(autocast.autocast_case(case, device, dtype, mixed=False))
    return rows


INSTANCE_NORM_CASES: list[Case] = [*_PLAIN_CASES, *_CPU_CASES, *_autocast_rows()]

# ------------------------------------------------------------------------------ errors


def _errors(case: Case) -> Case:
    return dataclasses.replace(case, family=_ERRORS)


def _fn_error(name: str, fn: str, *args: Any, **kwargs: Any) -> Case:
    return _errors(_error_case(f"{fn}:{name}", getattr(F, fn), getattr(TF, fn), *args, **kwargs))


def _module_error(name: str, cls: str, ctor: tuple[Any, ...], *args: Any) -> Case:
    def make(ns: Any) -> Callable[..., Any]:
        return lambda *a: getattr(ns, cls)(*ctor)(*a)

    return _errors(_error_case(f"{cls}:{name}", make(RN), make(torch.nn), *args))


def _same_object(fn: Callable[..., Tensor]) -> Callable[..., Any]:
    return lambda x, *a: fn(x, *a) is x


_X3 = _t((2, 3, 4))
_ONE = TensorSpec((3,), torch.float32, seed=0, kind="fill", low=1)
_F64 = TensorSpec((3,), torch.float64, seed=0, kind="fill", low=1)
_I64 = _t((2, 3, 4), torch.int64, kind="int", high=3)

INSTANCE_NORM_ERROR_CASES: list[Case] = [
    _fn_error("one spatial element", "instance_norm", _t((2, 3, 1, 1))),
    _fn_error("2-D input", "instance_norm", _t((2, 3))),
    _fn_error("0-D input", "instance_norm", _t(())),
    _fn_error("1-D input, eval", "instance_norm", _t((3,)), _t((3,)), _ONE, None, None, False),
    _fn_error("eval without statistics", "instance_norm", _X3, use_input_stats=False),
    _fn_error(
        "eval with running_mean only", "instance_norm", _X3, _t((3,)), None, None, None, False
    ),
    _fn_error("running_mean only", "instance_norm", _X3, _t((3,))),
    _fn_error("running_var only", "instance_norm", _X3, None, _ONE),
    _fn_error("float64 running_mean only", "instance_norm", _X3, _F64),
    _fn_error("weight size", "instance_norm", _X3, None, None, _t((4,))),
    _fn_error("bias size", "instance_norm", _X3, None, None, None, _t((2,))),
    _fn_error("running_var size", "instance_norm", _X3, _t((3,)), _t((4,), kind="positive")),
    _fn_error("2-D weight", "instance_norm", _X3, None, None, _t((3, 1))),
    _fn_error("integer input", "instance_norm", _I64),
    _fn_error("float64 weight", "instance_norm", _X3, None, None, _F64),
    _fn_error(
        "float64 input, float32 bias",
        "instance_norm",
        _t((2, 3, 4), torch.float64),
        None,
        None,
        None,
        _ONE,
    ),
    _module_error("2-D input", "InstanceNorm2d", (3,), _t((2, 3))),
    _module_error("5-D input", "InstanceNorm1d", (3,), _t((2, 3, 4, 1, 2))),
    _module_error("3-D input", "InstanceNorm3d", (3,), _X3),
    _module_error("affine, num_features mismatch", "InstanceNorm1d", (4, 1e-5, 0.1, True), _X3),
    _module_error("one spatial element", "InstanceNorm2d", (3,), _t((2, 3, 1, 1))),
    _module_error("1-D input", "LocalResponseNorm", (2,), _t((3,))),
    _module_error("size 0", "LocalResponseNorm", (0,), _X3),
    _fn_error("2-D input", "local_response_norm", _t((2, 3)), 2),
    _fn_error("size 0", "local_response_norm", _X3, 0),
    _fn_error("size -2", "local_response_norm", _X3, -2),
    _fn_error("float size", "local_response_norm", _X3, 2.0),
    _errors(
        _error_case(
            "local_response_norm: an empty input is returned as is",
            _same_object(F.local_response_norm),
            _same_object(TF.local_response_norm),
            _t((0, 3, 4)),
            2,
        )
    ),
]
