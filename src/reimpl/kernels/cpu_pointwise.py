"""Binding for the pointwise-loss kernels in ``cpu_pointwise.c`` (MSE, smooth L1, Huber;
built into the library of :mod:`reimpl.kernels.cpu_fused`, so the same compiler, cache and
opt-outs apply): one pass forward, reducing as it goes, and one pass backward.

The kernels read and write ``numel`` elements of every operand straight from the tensors'
addresses; :func:`usable` says whether they take a call, and every operand from the caller
passes :func:`reimpl.kernels.guard.check_dense` before its address reaches C.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any

import torch
from torch import Tensor

from reimpl.kernels import cpu_fused, guard

KINDS = {"mse": 0, "smooth_l1": 1, "huber": 2}
_DTYPES = {torch.float32: "f32", torch.float64: "f64"}
_PLAIN = (Tensor, torch.nn.Parameter)
_DENSE = torch.contiguous_format


class PointwiseArgs(ctypes.Structure):
    """``pointwise_t`` in ``cpu_pointwise.c``: one call, forward or backward."""

    _fields_ = [
        *((f, ctypes.c_void_p) for f in ("x", "t", "g", "out", "gx", "gt")),
        ("n", ctypes.c_int64),
        ("kind", ctypes.c_int32),
        ("b", ctypes.c_double),
        ("scale", ctypes.c_double),
    ]


@cache
def _functions() -> dict[str, Any] | None:
    fwd = cpu_fused.bind(
        [f"pointwise_fwd_{d}" for d in _DTYPES.values()], PointwiseArgs, ctypes.c_double
    )
    bwd = cpu_fused.bind([f"pointwise_bwd_{d}" for d in _DTYPES.values()], PointwiseArgs)
    return None if fwd is None or bwd is None else fwd | bwd


def usable(x: Tensor, t: Tensor) -> bool:
    """Two same-shaped, plain, contiguous CPU float32/float64 tensors of one dtype, not
    empty, with the library built (anything else, e.g. a broadcast target, takes torch
    ops)."""
    return (
        x.numel() > 0
        and x.dtype in _DTYPES
        and x.shape == t.shape
        and all(
            type(a) in _PLAIN and a.is_cpu and a.dtype == x.dtype and a.is_contiguous()
            for a in (x, t)
        )
        and _functions() is not None
    )


def _fn(way: str, x: Tensor) -> Any:
    fns = _functions()
    if fns is None or x.dtype not in _DTYPES:
        raise RuntimeError(f"the pointwise loss kernel takes float32/float64, not {x.dtype}")
    return fns[f"pointwise_{way}_{_DTYPES[x.dtype]}"]


def forward(kind: str, x: Tensor, t: Tensor, b: float, reduction: str) -> Tensor:
    """Per-element loss (``reduction='none'``) or its sum/mean, in one pass."""
    fn, n = _fn("fwd", x), x.numel()
    guard.check_dense(
        "pointwise loss kernel", x.dtype, [("input", x, n, _DENSE), ("target", t, n, _DENSE)]
    )
    out = torch.empty_like(x) if reduction == "none" else None
    args = PointwiseArgs(x=x.data_ptr(), t=t.data_ptr(), n=n, kind=KINDS[kind], b=b)
    if out is not None:
        args.out = out.data_ptr()
        fn(ctypes.byref(args))
        return out
    total = fn(ctypes.byref(args))
    if reduction == "mean":
        total = total / n if n else float("nan")
    return torch.tensor(total, dtype=x.dtype)


def backward(
    kind: str, x: Tensor, t: Tensor, g: Tensor, b: float, scale: float | None, need_t: bool
) -> tuple[Tensor, Tensor | None]:
    """dl/dx (and dl/dt = -dl/dx) in one pass: the slope times ``scale`` (a reduced loss's
    upstream gradient over its count) or times ``g`` element-wise (``reduction='none'``)."""
    fn, n = _fn("bwd", x), x.numel()
    read = [("input", x, n, _DENSE), ("target", t, n, _DENSE)]
    if scale is None:
        g = g.expand_as(x).to(x.dtype).contiguous()
        read.append(("upstream gradient", g, n, _DENSE))
    guard.check_dense("pointwise loss kernel (backward)", x.dtype, read)
    gx = torch.empty_like(x, memory_format=_DENSE)  # (fresh: nothing to check)
    gt = torch.empty_like(x, memory_format=_DENSE) if need_t else None
    args = PointwiseArgs(
        x=x.data_ptr(),
        t=t.data_ptr(),
        g=g.data_ptr() if scale is None else None,
        gx=gx.data_ptr(),
        gt=gt.data_ptr() if gt is not None else None,
        n=n,
        kind=KINDS[kind],
        b=b,
        scale=0.0 if scale is None else scale,
    )
    fn(ctypes.byref(args))
    return gx, gt
