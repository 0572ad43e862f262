"""The one autograd Function behind layer, RMS and group normalization.

All three normalize rows of a contiguous input seen as ``(rows / groups, groups, k, s)``
(:class:`~reimpl.kernels.cpu_norm.Layout`) and scale and shift channel ``c`` of group
``g`` by ``weight[g*k + c]``, ``bias[g*k + c]``: layer and RMS norm are one group of
``k`` channels of one element, group norm is ``G`` groups of ``C/G`` channels of ``S``
positions. With x̂ the normalized input and g = dy·w, the closed-form backward is

    dx = rstd · (g − mean(g) − x̂ · mean(g · x̂))    (mean over a row; RMS: no mean(g))
    dw = Σ dy · x̂,   db = Σ dy                      (over rows and positions)

Forward saves only the input, the per-row mean and rstd (torch's saved set); x̂ is
recomputed in backward. Three implementations share the Function: the C kernels of
:mod:`reimpl.kernels.cpu_norm` (float32/float64 CPU tensors, two passes over each row in
cache for either direction), the Triton kernels of :mod:`reimpl.kernels.triton_norm`
(layer and RMS norm of float32/16-bit CUDA tensors, statistics in float32 as torch's CUDA
kernels keep them) and torch ops (everything else: 16-bit CPU inputs, computed in
float32 and rounded once, mixed-dtype parameters, other devices). The C and torch-op
paths round as torch's CPU kernels do (the formulas are in ``cpu_norm.c``; torch's
16-bit layer norm scales by rstd before it centers), fused multiply-adds emulated here
in float64, so a row whose exact result is the bias (one value) comes out as torch's
does. For 16-bit layer and group norm torch also keeps the statistics in 16 bits for
backward (unless the parameters are float32) and arranges the closed form around sums
of the raw input; the torch-ops path does the same (:func:`_backward_uncentered`), as
the rounded statistics make the arrangement matter. Double backward differentiates the
composite form (:mod:`._norm_composite`) instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from reimpl.kernels import cpu_norm, triton_available
from reimpl.kernels.cpu_norm import GROUP, LAYER, RMS, Layout
from reimpl.nn.functional._common import aliases
from reimpl.nn.functional._norm_composite import opmath

Composite = Callable[[Tensor, Tensor | None, Tensor | None], Tensor]
_ROW_DIMS = (2, 3)  # a row of the 4-D view: its channels and their positions
_SUM_DIMS = (0, 3)  # a channel's parameter gradient: over samples and positions
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_PLAIN = (Tensor, torch.nn.Parameter)


class Plan(NamedTuple):
    """One call's fixed arguments: the layout, ``eps``, the layer (``cpu_norm.LAYER``,
    ``RMS`` or ``GROUP``: RMS rows are not centered) and the composite form of the same
    call (``composite(x, weight, bias)``), for double backward."""

    layout: Layout
    eps: float
    kind: int
    composite: Composite


def _view4(t: Tensor, at: Layout) -> Tensor:
    return t.view(at.rows // at.groups, at.groups, at.k, at.s)


def _param4(p: Tensor, at: Layout) -> Tensor:
    return p.reshape(1, at.groups, at.k, 1)


def _fma(a: Tensor, b: Tensor, c: Tensor | float) -> Tensor:
    """a·b + c rounded once, as torch's vectorized CPU kernels compute it: exactly for
    float32 (in float64, where the product of two float32 values is exact); other dtypes
    round twice."""
    if a.dtype != torch.float32:
        return a * b + c
    c64 = c.double() if isinstance(c, Tensor) else c
    return (a.double() * b.double() + c64).float()


def _affine(
    x4: Tensor,
    mean: Tensor | None,
    rstd: Tensor,
    w: Tensor | None,
    b: Tensor | None,
    kind: int,
    half: bool,
) -> Tensor:
    """x̂ · w + b in the computing dtype, in the order torch's CPU kernel for ``kind`` uses
    (``half``: the input was 16-bit, where torch's layer norm forms x·rstd − rstd·mean)."""
    if kind == RMS:
        y = x4 * rstd
        return y if w is None else _scaled(y, w)
    assert mean is not None
    if kind == GROUP and (w is not None or b is not None):
        sc = rstd if w is None else rstd * w
        return _fma(x4, sc, _fma(-sc, mean, 0.0 if b is None else b))
    if kind == LAYER and half:
        y = _fma(x4, rstd, -rstd * mean)
        if w is None:
            return y if b is None else y + b
        return _fma(y, w, 0.0 if b is None else b)
    if w is not None and b is not None:
        return _fma((x4 - mean) * rstd, w, b)
    if b is not None:
        return _fma(x4 - mean, rstd, b)
    y = (x4 - mean) * rstd
    return y if w is None else y * w


def _scaled(y: Tensor, w: Tensor) -> Tensor:
    """``y * w`` in place when the product keeps ``y``'s dtype (RMS norm multiplies in the
    promoted dtype, as torch's composite does, e.g. by a float64 weight)."""
    if torch.promote_types(y.dtype, w.dtype) == y.dtype:
        return y.mul_(w)
    return y * w


def _forward_eager(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, plan: Plan
) -> tuple[Tensor, Tensor | None, Tensor]:
    at = plan.layout
    acc = opmath(x.dtype)
    x4 = _view4(x, at).to(acc)
    mean: Tensor | None = None
    if plan.kind == RMS:
        rstd = (x4 * x4).mean(_ROW_DIMS, keepdim=True).add_(plan.eps).rsqrt_()
    else:
        var, mean = torch.var_mean(x4, _ROW_DIMS, correction=0, keepdim=True)
        if plan.kind == GROUP and var.dtype == torch.float32:  # torch adds eps in double
            rstd = var.double().add_(plan.eps).rsqrt_().float()
        else:
            rstd = var.add_(plan.eps).rsqrt_()
    w = None if weight is None else _param4(weight, at)
    b = None if bias is None else _param4(bias, at).to(acc)
    if w is not None and plan.kind != RMS:
        w = w.to(acc)
    y = _affine(x4, mean, rstd, w, b, plan.kind, acc != x.dtype)
    if (
        mean is not None
        and acc != x.dtype
        and all(p is None or p.dtype == x.dtype for p in (weight, bias))
    ):
        # torch keeps a 16-bit layer or group norm's statistics in the parameters' dtype
        # (16 bits unless they are float32): its backward sees them rounded
        mean, rstd = mean.to(x.dtype).to(acc), rstd.to(x.dtype).to(acc)
    return y.to(x.dtype).view(x.shape), mean, rstd


def _backward_eager(
    x: Tensor,
    dy: Tensor,
    weight: Tensor | None,
    mean: Tensor | None,
    rstd: Tensor,
    plan: Plan,
    need: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    at = plan.layout
    acc = opmath(x.dtype)
    x4, dy4 = _view4(x, at).to(acc), _view4(dy, at).to(acc)
    w4 = None if weight is None else _param4(weight, at)
    if mean is not None and acc != x.dtype:
        return _backward_uncentered(x, x4, dy4, w4, mean, rstd, plan, need)
    x_hat = (x4 - mean).mul_(rstd) if mean is not None else x4 * rstd
    dw = db = dx = None
    if need[1]:
        # layer norm's weight gradient takes x̂ as torch's kernel forms it there
        x_w = x_hat if mean is None or plan.kind != LAYER else _fma(x4, rstd, -rstd * mean)
        dw = (dy4 * x_w).sum(_SUM_DIMS)
    if need[2]:
        db = dy4.sum(_SUM_DIMS)
    if need[0]:
        g = dy4 * w4 if w4 is not None else dy4
        dx = g - x_hat * (g * x_hat).mean(_ROW_DIMS, keepdim=True)
        if mean is not None:
            dx = dx.sub_(g.mean(_ROW_DIMS, keepdim=True))
        dx = dx.mul_(rstd).to(x.dtype).view(x.shape)
    return dx, dw, db


def _backward_uncentered(
    x: Tensor,
    x4: Tensor,
    dy4: Tensor,
    w4: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    plan: Plan,
    need: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """16-bit layer and group norm: the same closed form arranged as torch's CPU kernels
    arrange it, from sums of the raw input, dx = a·dy·w + b·x + c with a = rstd,
    b = (Σg·m − Σg·x)·a³/n, c = −b·m − Σg·a/n (g = dy·w, n values per row). Identical in
    exact arithmetic; with torch's 16-bit-rounded statistics the arrangement decides the
    result (the rounded mean is not the row's mean), so it is torch's that is used."""
    at = plan.layout
    w = w4.to(x4.dtype) if w4 is not None else None
    ds_c = (dy4 * x4).sum(3, keepdim=True)  # per channel of each row
    db_c = dy4.sum(3, keepdim=True)
    dw = db = dx = None
    if need[1]:
        if plan.kind == LAYER:  # (x̂ as torch's layer norm forms it for the weight)
            dw = (dy4 * _fma(x4, rstd, -rstd * mean)).sum(_SUM_DIMS)
        else:
            dw = ((ds_c - db_c * mean) * rstd).sum(_SUM_DIMS)
    if need[2]:
        db = db_c.sum(_SUM_DIMS)
    if need[0]:
        ds_g = (ds_c if w is None else ds_c * w).sum(2, keepdim=True)
        db_g = (db_c if w is None else db_c * w).sum(2, keepdim=True)
        scale = 1.0 / (at.k * at.s)
        b = _fma(db_g, mean, -ds_g) * rstd * rstd * rstd * scale
        c = _fma(-b, mean, -db_g * rstd * scale)
        if w is None:
            a_dy = rstd * dy4
        else:  # (torch's layer norm scales dy first, its group norm the weight)
            a_dy = (rstd * dy4) * w if plan.kind == LAYER else (rstd * w) * dy4
        dx = (_fma(b, x4, a_dy) + c).to(x.dtype).view(x.shape)
    return dx, dw, db


def _kernel(x: Tensor, weight: Tensor | None, bias: Tensor | None, plan: Plan) -> str:
    """Which kernels take this call: "triton" (layer or RMS norm of a float32/16-bit
    tensor where :func:`~reimpl.kernels.triton_available`, parameters on its device in
    its dtype or float32), "c" (:func:`cpu_norm.usable`) or "" (torch ops)."""
    if (
        plan.kind != GROUP
        and x.dtype in _TRITON_DTYPES
        and type(x) in _PLAIN  # (a tensor subclass may not own the memory it reports)
        and triton_available(x)
        and all(
            p is None
            or (type(p) in _PLAIN and p.device == x.device and p.dtype in (x.dtype, torch.float32))
            for p in (weight, bias)
        )
    ):
        return "triton"
    return "c" if cpu_norm.usable(x, weight, bias) else ""


class Normalize(torch.autograd.Function):
    """y = x̂ · weight + bias per row of ``plan.layout`` (see the module docstring), a
    contiguous tensor of the input's shape and dtype."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, plan: Plan
    ) -> Tensor:
        xc = x.contiguous()
        ctx.kernel = _kernel(xc, weight, bias, plan)
        if ctx.kernel == "triton":
            from reimpl.kernels import triton_norm

            at = plan.layout
            y, mean, rstd = triton_norm.forward(
                xc, weight, bias, at.rows, at.k, plan.eps, plan.kind == RMS
            )
        elif ctx.kernel == "c":
            y, mean, rstd = cpu_norm.forward(xc, weight, bias, plan.layout, plan.eps, plan.kind)
        else:
            y, mean, rstd = _forward_eager(xc, weight, bias, plan)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.plan = plan
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight, bias, mean, rstd = ctx.saved_tensors
        plan: Plan = ctx.plan
        need = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[2],
        )
        if torch.is_grad_enabled():  # create_graph: differentiable gradients
            return (*_composite_grads(plan, (x, weight, bias), dy, need), None)
        xc, dyc = x.contiguous(), dy.contiguous()
        if ctx.kernel == "triton":
            from reimpl.kernels import triton_norm

            at = plan.layout
            dx, dw, db = triton_norm.backward(xc, dyc, weight, mean, rstd, at.rows, at.k, need)
        elif ctx.kernel == "c" and cpu_norm.usable(dyc, xc):
            dx, dw, db = cpu_norm.backward(
                xc, dyc, weight, mean, rstd, plan.layout, plan.kind, need
            )
        else:
            dx, dw, db = _backward_eager(xc, dyc, weight, mean, rstd, plan, need)
        if dx is not None and dx.shape != x.shape:
            dx = dx.view(x.shape)
        return dx, _as_param(dw, weight), _as_param(db, bias), None


def _as_param(grad: Tensor | None, p: Tensor | None) -> Tensor | None:
    """A parameter's gradient in its dtype and shape (a view or a cast only when needed:
    each costs microseconds, a sizeable part of a small layer's step)."""
    if grad is None or p is None or (grad.dtype == p.dtype and grad.shape == p.shape):
        return grad
    return grad.to(p.dtype).view(p.shape)


def _composite_grads(
    plan: Plan,
    inputs: tuple[Tensor, Tensor | None, Tensor | None],
    dy: Tensor,
    need: tuple[bool, bool, bool],
) -> tuple[Tensor | None, ...]:
    """The gradients of the composite form (of :func:`aliases` of the inputs), themselves
    differentiable."""
    with torch.enable_grad():
        inputs = aliases(*inputs)
        wanted = [t for t, n in zip(inputs, need, strict=True) if n and t is not None]
        y = plan.composite(*inputs)
        grads = iter(torch.autograd.grad(y, wanted, dy, create_graph=True, allow_unused=True))
    out = []
    for t, n in zip(inputs, need, strict=True):
        g = next(grads) if n and t is not None else None
        out.append(torch.zeros_like(t) if g is None and n and t is not None else g)
    return tuple(out)
