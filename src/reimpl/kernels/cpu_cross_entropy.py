"""Binding for the class-index cross-entropy kernel in ``cpu_cross_entropy.c`` (built into
the library of :mod:`reimpl.kernels.cpu_fused`, so the same compiler, cache and opt-outs
apply): the per-row step of :mod:`reimpl.nn.functional._cross_entropy_lean` on CPU.

The torch-ops row step is a pass over the logits per op (max, gather, subtract, exp, sum,
log, scale, scatter); the kernel does a row in two passes over its logits and one over its
gradient while the row is in cache.

:func:`rows` has ``_rows_eager``'s signature and contract and falls back to it where the
kernel does not take a call (not plain contiguous float32/float64 CPU logits, a class
weight of another dtype, ``torch.compile``, no compiled library). :func:`run` is the one
gate: every operand whose address reaches C passes :func:`reimpl.kernels.guard.check_dense`
(plain, dense, of its dtype -- int64 for the targets --, exactly the elements the kernel
walks within its storage; written over the logits only when the caller said so, and then
overlapping no other operand). The kernel also refuses a target out of range itself,
before writing anything, so no index it is given can reach outside a row.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any

import torch
from torch import Tensor

from reimpl.kernels import cpu_fused, guard

_DTYPES = {torch.float32: "f32", torch.float64: "f64"}
_P = ctypes.c_void_p
_DENSE = torch.contiguous_format


class CEArgs(ctypes.Structure):
    """``ce_t`` in ``cpu_cross_entropy.c``."""

    _fields_ = [
        *((f, _P) for f in ("x", "t", "w", "scale", "loss", "out")),
        *((f, ctypes.c_int64) for f in ("n", "c", "scale_n", "ignore_index")),
        ("eps", ctypes.c_double),
    ]


@cache
def _functions() -> dict[str, Any] | None:
    return cpu_fused.bind([f"ce_rows_{d}" for d in _DTYPES.values()], CEArgs, ctypes.c_int64)


def takes(x: Tensor, weight: Tensor | None) -> bool:
    """Whether the kernel takes these logits (and class weight): plain contiguous
    float32/float64 (N, C) CPU logits, not empty, outside ``torch.compile``, library built."""
    if x.dtype not in _DTYPES or x.dim() != 2 or x.numel() == 0:
        return False
    if torch.compiler.is_compiling() or not guard.plain_cpu(x, x.dtype):
        return False
    if weight is not None and not guard.plain_cpu(weight, x.dtype, None):
        return False
    return _functions() is not None


def rows(
    x: Tensor,
    t: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    smoothing: float,
    scale: Tensor | None,
    need_grad: bool,
    *,
    in_place: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``_rows_eager`` in one kernel call: per-row losses and, if ``need_grad``, the
    logits gradient times ``scale`` (one factor, or (n, 1)); ``in_place``: the gradient
    overwrites ``x``."""
    if need_grad and scale is None:
        raise ValueError("a gradient of the rows needs a scale (shape (1,) or (n, 1))")
    if not takes(x, weight):
        from reimpl.nn.functional._cross_entropy_lean import _rows_eager

        return _rows_eager(
            x, t, weight, ignore_index, smoothing, scale, need_grad, in_place=in_place
        )
    # the small operands (N targets, C weights, 1 or N scales) in the kernel's form
    t = t.to(torch.int64).contiguous()
    w = None if weight is None else weight.contiguous()
    sc = scale.to(x.dtype).reshape(-1).contiguous() if need_grad and scale is not None else None
    loss = torch.empty(x.shape[0], dtype=x.dtype)
    out = None if sc is None else x if in_place else torch.empty_like(x)
    run(x, t, w, sc, loss, out, ignore_index, smoothing)
    return loss, out


def run(
    x: Tensor,
    t: Tensor,
    weight: Tensor | None,
    scale: Tensor | None,
    loss: Tensor,
    out: Tensor | None,
    ignore_index: int,
    smoothing: float,
) -> None:
    """The kernel over every row of ``x`` (N, C): ``loss`` (N) and, with ``scale`` (1 or N
    values), the gradient into ``out`` (fresh, or ``x`` itself). Every operand passes the
    gate first; an out-of-range target raises ``IndexError`` with nothing written."""
    fns = _functions()
    assert fns is not None
    where = "cross-entropy kernel"
    n, c = x.shape if x.dim() == 2 else (x.numel(), 1)
    if x.dim() != 2 or n == 0 or c == 0:
        raise RuntimeError(f"{where}: logits must be a non-empty (N, C) tensor, got {x.shape}")
    if (out is None) != (scale is None):
        raise RuntimeError(f"{where}: a gradient needs both a scale and an output")
    ns = 0 if scale is None else scale.numel()
    if scale is not None and ns not in (1, n):
        raise RuntimeError(f"{where}: scale has {ns} elements: one, or one per row ({n})")
    guard.check_dense(where, torch.int64, [("target", t, n, _DENSE)])
    read = [("logits", x, n * c, _DENSE), ("weight", weight, c, _DENSE)]
    read.append(("scale", scale, ns, _DENSE))
    written = [("loss", loss, n, _DENSE)]
    if out is not None and out is not x:
        written.append(("gradient", out, n * c, _DENSE))
    guard.check_dense(where, x.dtype, read, written)
    if out is x:  # in place: x is written, so it must overlap nothing else either
        roles: guard.Roles = [
            ("logits", [x]),
            ("target", [t]),
            ("weight", [weight]),
            ("scale", [scale]),
        ]
        guard.check_disjoint(where, roles, read=(1, 2, 3), lone=True)
    args = CEArgs(
        x=x.data_ptr(),
        t=t.data_ptr(),
        w=_ptr(weight),
        scale=_ptr(scale),
        loss=loss.data_ptr(),
        out=_ptr(out),
        n=n,
        c=c,
        scale_n=ns,
        ignore_index=ignore_index,
        eps=smoothing,
    )
    bad = fns[f"ce_rows_{_DTYPES[x.dtype]}"](ctypes.byref(args))
    if bad:
        raise IndexError(
            f"Target {int(t[bad - 1])} is out of bounds: class indices must be in "
            f"[0, {c - 1}] (or equal ignore_index={ignore_index})."
        )


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()
