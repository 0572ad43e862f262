"""Binding for the BCE-with-logits kernels in ``cpu_pointwise.c`` (built into the library of
:mod:`reimpl.kernels.cpu_fused`, so the same compiler, cache and opt-outs apply).

torch's forward and backward are several passes over memory each (log-sigmoid, the target
terms, the weight, the reduction; then sigmoid, the target, the upstream gradient, the
mean); the kernels are one pass each way, reducing inside the forward pass.

The kernels take the common layouts: an input and a target of one shape, and a ``weight`` /
``pos_weight`` that is absent or whose shape (leading ones aside) is a trailing part of the
input's -- one number, one value per class (the last dimension), a tensor of the input's
shape, or anything between. Such an operand repeats every ``numel()`` elements of the input,
so it reaches the kernel as a *periodic* operand -- element i reads ``operand[i % period]``
-- and a short one is tiled first, so the kernel's inner loops stay long.

:func:`prepare` says whether the kernels take a call (None: the caller computes with torch
ops); every operand then passes :func:`reimpl.kernels.guard.check_dense` (plain,
contiguous, of the input's dtype, exactly the elements the kernel walks, within its
storage; what the kernels write is allocated here, fresh, so it overlaps nothing) before
its address reaches C.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any, NamedTuple

import torch
from torch import Tensor

from reimpl.kernels import cpu_fused, guard

_DTYPES = {torch.float32: "f32", torch.float64: "f64"}
_P = ctypes.c_void_p
#: a per-class operand shorter than this is tiled to at least this length: the kernel's
#: inner loop runs to the end of the period, so a short one would leave it few iterations
_MIN_PERIOD = 1024


class BCEArgs(ctypes.Structure):
    """``bce_t`` in ``cpu_pointwise.c``."""

    _fields_ = [
        *((f, _P) for f in ("x", "t", "w", "p", "g", "out", "gx", "gt")),
        *((f, ctypes.c_int64) for f in ("n", "w_period", "p_period")),
        ("mean", ctypes.c_int32),
        ("scale", ctypes.c_double),
    ]


class Periodic(NamedTuple):
    """``weight`` and ``pos_weight`` as the kernel reads them (None: absent): element i of
    the input meets ``w[i % w_period]`` and ``p[i % p_period]``."""

    w: Tensor | None
    w_period: int
    p: Tensor | None
    p_period: int


@cache
def _functions() -> dict[str, Any] | None:
    fwd = cpu_fused.bind([f"bce_fwd_{d}" for d in _DTYPES.values()], BCEArgs, ctypes.c_double)
    bwd = cpu_fused.bind([f"bce_bwd_{d}" for d in _DTYPES.values()], BCEArgs)
    return None if fwd is None or bwd is None else fwd | bwd


def _periodic(extra: Tensor | None, x: Tensor) -> tuple[Tensor | None, int] | None:
    """``extra`` flattened to one period the kernel can walk (tiled when short), or None
    when its broadcast against ``x`` is not one the kernel takes."""
    if extra is None:
        return None, 0
    if extra.dtype != x.dtype or not guard.plain_cpu(extra, x.dtype):
        return None
    shape = list(extra.shape)
    while shape and shape[0] == 1:
        del shape[0]  # (leading ones broadcast away)
    if extra.dim() > x.dim() or (shape and list(x.shape[-len(shape) :]) != shape):
        return None  # another broadcast, or one that widens the result: torch ops do those
    period = extra.numel()  # the trailing dimensions it covers: it repeats every period
    flat = extra.reshape(-1)
    if period < _MIN_PERIOD:
        reps = -(-_MIN_PERIOD // period)
        return flat.repeat(reps), period * reps
    return flat, period


def prepare(
    x: Tensor, t: Tensor, weight: Tensor | None, pos_weight: Tensor | None
) -> Periodic | None:
    """The operands as the kernels take them, or None when they do not take this call (a
    16-bit or mixed dtype, a subclass, a non-contiguous view, another broadcast, an empty
    input, ``torch.compile``, or no compiled library): torch ops compute it then."""
    if x.dtype not in _DTYPES or x.numel() == 0 or torch.compiler.is_compiling():
        return None
    if x.shape != t.shape or not (guard.plain_cpu(x, x.dtype) and guard.plain_cpu(t, x.dtype)):
        return None
    w, p = _periodic(weight, x), _periodic(pos_weight, x)
    if w is None or p is None or _functions() is None:
        return None
    return Periodic(w[0], w[1], p[0], p[1])


def _gate(where: str, x: Tensor, t: Tensor, at: Periodic, upstream: Tensor | None = None) -> None:
    """Every operand from the caller as the kernel walks it (``n`` elements, the extras
    one period)."""
    n, dense = x.numel(), torch.contiguous_format
    read = [
        ("input", x, n, dense),
        ("target", t, n, dense),
        ("weight", at.w, at.w_period, dense),
        ("pos_weight", at.p, at.p_period, dense),
        ("upstream gradient", upstream, n, dense),
    ]
    guard.check_dense(where, x.dtype, read)


def _args(x: Tensor, t: Tensor, at: Periodic) -> BCEArgs:
    return BCEArgs(
        x=x.data_ptr(),
        t=t.data_ptr(),
        w=_ptr(at.w),
        p=_ptr(at.p),
        n=x.numel(),
        w_period=at.w_period,
        p_period=at.p_period,
    )


def forward(x: Tensor, t: Tensor, at: Periodic, reduction: str) -> Tensor:
    """The per-element loss (``reduction='none'``) or its sum or mean, in one pass."""
    fns = _functions()
    assert fns is not None
    n = x.numel()
    out = torch.empty_like(x) if reduction == "none" else None
    _gate("BCE-with-logits kernel", x, t, at)
    args = _args(x, t, at)
    args.out = _ptr(out)
    total = fns[f"bce_fwd_{_DTYPES[x.dtype]}"](ctypes.byref(args))
    if out is not None:
        return out
    return torch.tensor(total / n if reduction == "mean" else total, dtype=x.dtype)


def backward(
    x: Tensor, t: Tensor, at: Periodic, g: Tensor, reduction: str, need_t: bool
) -> tuple[Tensor, Tensor | None]:
    """(d loss / d input, d loss / d target or None) in one pass, for the upstream gradient
    ``g``: one number for a reduced loss, per element for ``reduction='none'``."""
    fns = _functions()
    assert fns is not None
    gx = torch.empty_like(x)
    gt = torch.empty_like(x) if need_t else None
    per = reduction == "none"
    if per:
        g = g.expand_as(x).to(x.dtype).contiguous()
    _gate("BCE-with-logits kernel (backward)", x, t, at, upstream=g if per else None)
    args = _args(x, t, at)
    args.g, args.gx, args.gt = _ptr(g) if per else None, gx.data_ptr(), _ptr(gt)
    args.mean = int(reduction == "mean")
    args.scale = 0.0 if per else float(g)
    fns[f"bce_bwd_{_DTYPES[x.dtype]}"](ctypes.byref(args))
    return gx, gt


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()
