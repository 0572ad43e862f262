"""Binding for the normalization kernels in ``cpu_norm.c`` (built into the library of
:mod:`reimpl.kernels.cpu_fused`, so the same compiler, cache and opt-outs apply).

The kernels read and write ``rows * k * s`` elements of x, dy, y and dx, ``rows`` of mean
and rstd, and ``groups * k`` of weight, bias and their gradients, straight from the
tensors' addresses. :func:`_checked` is the one gate: every operand that comes from the
caller must be a plain, dense, contiguous CPU tensor of the input's dtype holding exactly
that many elements within its storage (what the kernels write is allocated here, fresh,
so it can overlap nothing); otherwise ``RuntimeError``. :func:`usable` says beforehand
whether the kernels take a call at all.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any, NamedTuple

import torch
from torch import Tensor

from reimpl.kernels import cpu_fused, guard

_DTYPES = {torch.float32: "f32", torch.float64: "f64"}
#: the layer a call computes (``norm_t.kind``): the formulas differ as torch's do
LAYER, RMS, GROUP = 0, 1, 2
_P = ctypes.c_void_p
_DENSE = torch.contiguous_format


class Layout(NamedTuple):
    """x as (rows / groups, groups, k, s): ``rows`` normalized rows of ``k * s`` elements;
    channel c of group g has weight ``w[g * k + c]`` over its ``s`` elements."""

    rows: int
    groups: int
    k: int
    s: int


class NormArgs(ctypes.Structure):
    """``norm_t`` in ``cpu_norm.c``."""

    _fields_ = [
        *((f, _P) for f in ("x", "w", "b", "dy", "y", "mean", "rstd", "dx", "dw", "db")),
        *((f, ctypes.c_int64) for f in ("rows", "groups", "k", "s")),
        ("kind", ctypes.c_int32),
        ("eps", ctypes.c_double),
    ]


@cache
def _functions() -> dict[str, Any] | None:
    fwd = cpu_fused.bind([f"norm_fwd_{d}" for d in _DTYPES.values()], NormArgs)
    bwd = cpu_fused.bind([f"norm_bwd_{d}" for d in _DTYPES.values()], NormArgs, ctypes.c_int)
    return None if fwd is None or bwd is None else fwd | bwd


def usable(x: Tensor, *params: Tensor | None) -> bool:
    """Can the kernels take ``x`` (and the parameters beside it): plain contiguous CPU
    tensors of one float32/float64 dtype, not empty, outside ``torch.compile``, with the
    library built. Anything else computes with torch ops."""
    if x.dtype not in _DTYPES or x.numel() == 0 or torch.compiler.is_compiling():
        return False
    if not all(p is None or guard.plain_cpu(p, x.dtype) for p in (x, *params)):
        return False
    return _functions() is not None


def _checked(where: str, dtype: torch.dtype, read: dict[str, tuple[Tensor | None, int]]) -> None:
    """Every operand from the caller (name -> (tensor or None, element count the kernel
    walks)) contiguous, as the kernel needs it: :func:`guard.check_dense`."""
    guard.check_dense(where, dtype, [(k, t, n, _DENSE) for k, (t, n) in read.items()])


def forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, at: Layout, eps: float, kind: int
) -> tuple[Tensor, Tensor | None, Tensor]:
    """(y, mean or None for RMS norm, rstd): ``x`` normalized per row, scaled and shifted."""
    fns = _functions()
    assert fns is not None
    n, channels = at.rows * at.k * at.s, at.groups * at.k
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    mean = x.new_empty(at.rows) if kind != RMS else None
    rstd = x.new_empty(at.rows)
    # (what is written was allocated just above: the right size, contiguous, its own
    # storage, so only what comes from the caller needs the gate)
    _checked(
        "normalization kernel",
        x.dtype,
        {"input": (x, n), "weight": (weight, channels), "bias": (bias, channels)},
    )
    args = NormArgs(
        x=x.data_ptr(),
        w=_ptr(weight),
        b=_ptr(bias),
        y=y.data_ptr(),
        mean=_ptr(mean),
        rstd=rstd.data_ptr(),
        rows=at.rows,
        groups=at.groups,
        k=at.k,
        s=at.s,
        kind=kind,
        eps=eps,
    )
    fns[f"norm_fwd_{_DTYPES[x.dtype]}"](ctypes.byref(args))
    return y, mean, rstd


def backward(
    x: Tensor,
    dy: Tensor,
    weight: Tensor | None,
    mean: Tensor | None,
    rstd: Tensor,
    at: Layout,
    kind: int,
    need: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(dx, dweight, dbias), each only where ``need`` asks (dweight/dbias in the weight's
    shape; they need a weight to exist, as the layer's parameters)."""
    fns = _functions()
    assert fns is not None
    if (mean is None) != (kind == RMS):
        raise RuntimeError("normalization kernel (backward): a mean is saved unless RMS norm")
    n, channels = at.rows * at.k * at.s, at.groups * at.k
    dx = torch.empty_like(x, memory_format=torch.contiguous_format) if need[0] else None
    dw = x.new_empty(channels) if need[1] else None
    db = x.new_empty(channels) if need[2] else None
    _checked(
        "normalization kernel (backward)",
        x.dtype,
        {
            "input": (x, n),
            "output gradient": (dy, n),
            "weight": (weight, channels),
            "mean": (mean, at.rows),
            "rstd": (rstd, at.rows),
        },
    )  # (what is written is allocated just above, as in forward)
    args = NormArgs(
        x=x.data_ptr(),
        w=_ptr(weight),
        dy=dy.data_ptr(),
        mean=_ptr(mean),
        rstd=rstd.data_ptr(),
        dx=_ptr(dx),
        dw=_ptr(dw),
        db=_ptr(db),
        rows=at.rows,
        groups=at.groups,
        k=at.k,
        s=at.s,
        kind=kind,
        eps=0.0,
    )
    if fns[f"norm_bwd_{_DTYPES[x.dtype]}"](ctypes.byref(args)) != 0:
        raise MemoryError("normalization kernel (backward): no memory for the per-thread sums")
    return dx, dw, db


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()
