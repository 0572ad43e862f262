"""Regression losses (MSE, L1, smooth L1, Huber), written from elementary tensor ops.

Every function takes torch's arguments in torch's order with torch's defaults. Under
``torch.autocast`` they follow torch's policy (see :mod:`._autocast`): the losses run in
float32; the element-``weight`` forms are torch's elementwise Python code, which autocast
leaves alone on CPU and on CUDA runs with an fp32 ``pow`` and float32 sums.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from reimpl.kernels import cpu_pointwise
from reimpl.nn.functional import _autocast, _reduction
from reimpl.nn.functional._common import acc as _acc
from reimpl.nn.functional._common import compiling as _compiling
from reimpl.nn.functional._common import to_dtype as _to_dtype
from reimpl.nn.functional._common import transformed as _transformed
from reimpl.nn.functional._common import warn_size_mismatch as _warn_size_mismatch


def _regression_inputs(name: str, input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    x, t = torch.broadcast_tensors(input, target)
    promoted = torch.promote_types(x.dtype, t.dtype)
    if not (promoted.is_floating_point or promoted.is_complex):
        raise NotImplementedError(
            f"{name} is not implemented for {x.dtype} inputs; use a floating point dtype"
        )
    return x, t


def _elementwise_weight(weight: Tensor | None, input: Tensor) -> None:
    if weight is not None and weight.size() != input.size():
        raise ValueError(
            f"weight size {tuple(weight.size())} must equal input size {tuple(input.size())}"
        )


class _Pointwise(torch.autograd.Function):
    """MSE, smooth L1 and Huber of d = x - t, reduced inside (so backward scales by a scalar):

    mse:        d^2                                            dl/dd = 2 d
    smooth_l1:  0.5 d^2 / b  if |d| < b  else |d| - 0.5 b        dl/dd = clamp(d / b, -1, 1)
    huber:      0.5 d^2      if |d| < b  else b (|d| - 0.5 b)    dl/dd = clamp(d, -b, b)

    The gradients are written out, as torch's are: a nan difference gives a nan gradient and
    an infinite one a finite slope, which autograd through ``where`` would not. 16-bit
    gradients are formed in float32 and rounded once (2 d alone can overflow float16).
    Inputs, not d, are saved, so d recomputed in backward keeps double backward connected.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        t: Tensor,
        kind: str,
        b: float,
        reduction: str,  # type: ignore[override]
    ) -> Tensor:
        ctx.save_for_backward(x, t)
        ctx.kind, ctx.b, ctx.reduction = kind, b, reduction
        ctx.kernel = not _compiling() and cpu_pointwise.usable(x, t)
        if ctx.kernel:  # one pass on CPU (reimpl.kernels.cpu_pointwise), same formula
            return cpu_pointwise.forward(kind, x, t, b, reduction)
        d = x - t
        if kind == "mse":  # (in place, except for torch.compile: see _common.to_dtype)
            loss = d * d if _compiling() else d.mul_(d)
        else:
            ad = d.abs_()
            small = ad < b
            # the quadratic piece is written where it applies, into a fresh buffer
            quad = ad * ad
            quad.mul_(0.5 if kind == "huber" else 0.5 / b)
            lin = ad.sub_(0.5 * b)
            if kind == "huber":
                lin.mul_(b)
            loss = torch.where(small, quad, lin)
        return _reduction.apply(loss, reduction)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, t = ctx.saved_tensors
        b = ctx.b
        if ctx.kernel and not torch.is_grad_enabled():
            per = None  # reduced: one upstream number for every element
            if ctx.reduction != "none":
                per = float(g) / (x.numel() if ctx.reduction == "mean" else 1)
            gx, gt = cpu_pointwise.backward(ctx.kind, x, t, g, b, per, ctx.needs_input_grad[1])
            return (gx if ctx.needs_input_grad[0] else None, gt, None, None, None)
        scale = _acc(g)
        if ctx.reduction == "mean":
            scale = scale / x.numel()
        d = _acc(x) - _acc(t)
        if torch.is_grad_enabled():  # double backward: out-of-place ops autograd can follow
            if ctx.kind == "mse":
                gd = d * (2 * scale)
            elif ctx.kind == "huber":
                gd = d.clamp(-b, b) * scale
            else:
                gd = (d / b).clamp(-1, 1) * scale
        elif ctx.kind == "mse":
            gd = d.mul_(2 * scale)
        elif ctx.kind == "huber":
            gd = d.clamp_(-b, b).mul_(scale)
        else:
            gd = d.div_(b).clamp_(-1, 1).mul_(scale)
        gd = gd.to(x.dtype)
        return (
            gd if ctx.needs_input_grad[0] else None,
            -gd if ctx.needs_input_grad[1] else None,
            None,
            None,
            None,
        )


def _pointwise(x: Tensor, t: Tensor, kind: str, b: float, reduction: str) -> Tensor:
    """``_Pointwise`` for plain autograd; its composite form (out-of-place elementary ops)
    under torch.func transforms and forward-mode AD, which the Function's fast path (C
    kernel, in-place buffers, a host read of the upstream gradient) cannot serve.

    The composite's derivatives are torch's: d(d^2) = 2d; the ``where`` of the two pieces
    differentiates to clamp(d / b, -1, 1) (smooth L1) or clamp(d, -b, b) (Huber), and to
    [|d| < b] / b or [|d| < b] a second time, as torch's double backward gives.
    """
    if not _transformed():
        return _Pointwise.apply(x, t, kind, b, reduction)
    d = x - t
    if kind == "mse":
        loss = d * d
    else:
        ad = d.abs()
        quad = ad * ad * (0.5 if kind == "huber" else 0.5 / b)
        lin = (ad - 0.5 * b) * b if kind == "huber" else ad - 0.5 * b
        loss = torch.where(ad < b, quad, lin)
    return _reduction.apply(loss, reduction)


class _MixedDtypeHuber(torch.autograd.Function):
    """Huber terms of an input and a target of different dtypes, as torch's kernel gives
    them: computed in the promoted dtype and stored in the input's. torch's backward
    refuses such a pair (its kernel wants one dtype), and so does this one."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, t: Tensor, delta: float) -> Tensor:  # type: ignore[override]
        ctx.dtypes = (x.dtype, t.dtype)
        common = torch.promote_types(x.dtype, t.dtype)
        d = (x.to(common) - t.to(common)).abs()
        loss = torch.where(d < delta, 0.5 * d * d, delta * (d - 0.5 * delta))
        return _to_dtype(loss, x.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[None, ...]:  # type: ignore[override]
        x_dtype, t_dtype = ctx.dtypes
        raise RuntimeError(
            f"huber_loss has no gradient for an input ({x_dtype}) and a target ({t_dtype}) "
            "of different dtypes (torch's backward kernel refuses the pair too); convert "
            "the target with target.to(input.dtype)"
        )


def _weighted_regression(
    impl: Callable[..., Tensor],
    input: Tensor,
    target: Tensor,
    size_average: bool | None,
    reduce: bool | None,
    reduction: str,
    weight: Tensor | None,
) -> Tensor:
    """MSE's and L1's shared preamble, in torch's order (warn on a size mismatch, map the
    legacy flags, broadcast, check the element weight's size), then ``impl`` under the
    autocast policy."""
    _warn_size_mismatch(input, target)
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_reduction(size_average, reduce)
    x, t = torch.broadcast_tensors(input, target)
    _elementwise_weight(weight, input)
    return _autocast.run(input, impl, x, t, reduction, weight)


def mse_loss(
    input: Tensor, target: Tensor, size_average: bool | None = None, reduce: bool | None = None,
    reduction: str = "mean", weight: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """l = (x - t)^2 (times ``weight``; the weighted mean divides by sum(weight))."""
    return _weighted_regression(_mse_loss, input, target, size_average, reduce, reduction, weight)


def _mse_loss(
    x: Tensor, t: Tensor, reduction: str, weight: Tensor | None, ac: str | None
) -> Tensor:
    if weight is not None:
        d = x - t
        if ac == "cuda":  # torch.pow is fp32 under CUDA autocast
            d = _autocast.fp32(ac, d)
        return _reduction.weighted(d**2, weight, reduction, mean_by_weight=True, autocast=ac)
    _reduction.check(reduction)
    if ac is not None:  # fp32 policy on CPU and CUDA
        x, t = _autocast.fp32(ac, x), _autocast.fp32(ac, t)
    x, t = _regression_inputs("mse_loss", x, t)
    return _pointwise(x, t, "mse", 0.0, reduction)


def l1_loss(
    input: Tensor, target: Tensor, size_average: bool | None = None, reduce: bool | None = None,
    reduction: str = "mean", weight: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """l = |x - t| (times ``weight``; the weighted mean divides by sum(weight))."""
    return _weighted_regression(_l1_loss, input, target, size_average, reduce, reduction, weight)


def _l1_loss(x: Tensor, t: Tensor, reduction: str, weight: Tensor | None, ac: str | None) -> Tensor:
    if weight is not None:
        loss = torch.abs(x - t)
        return _reduction.weighted(loss, weight, reduction, mean_by_weight=True, autocast=ac)
    _reduction.check(reduction)
    if ac is not None:  # fp32 policy on CPU and CUDA
        x, t = _autocast.fp32(ac, x), _autocast.fp32(ac, t)
    return _reduction.apply(torch.abs(x - t), reduction)


def smooth_l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    beta: float = 1.0,
) -> Tensor:
    """l = 0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta,  d = x - t;  beta = 0 is L1."""
    _warn_size_mismatch(input, target)
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_reduction(size_average, reduce)
    _reduction.check(reduction)
    return _autocast.run_fp32(  # fp32 policy on CPU and CUDA
        input, _smooth_l1_loss, input, target, reduction=reduction, beta=beta
    )


def _smooth_l1_loss(input: Tensor, target: Tensor, reduction: str, beta: float) -> Tensor:
    x, t = _regression_inputs("smooth_l1_loss", input, target)
    if beta < 0:
        raise RuntimeError(f"smooth_l1_loss needs beta >= 0, got beta={beta}")
    if beta == 0.0:
        # The quadratic piece is empty: plain L1 (and no 0/0 in the gradient).
        return _reduction.apply(torch.abs(x - t), reduction)
    return _pointwise(x, t, "smooth_l1", beta, reduction)


def _real(name: str, value: Any) -> float:
    """A real-number argument, as torch's argument parser takes it: a Python or NumPy
    real number, or a 0-d real tensor; anything else is a TypeError."""
    if isinstance(value, Tensor) and value.dim() == 0 and not value.is_complex():
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"{name} must be a real number (float or int), got {type(value).__name__}")


def huber_loss(
    input: Tensor,
    target: Tensor,
    reduction: str = "mean",
    delta: float = 1.0,
    weight: Tensor | None = None,
) -> Tensor:
    """l = 0.5 d^2 if |d| < delta else delta (|d| - 0.5 delta);  = delta * smooth_l1(beta=delta).

    The result has the input's dtype (a wider target is used at its own precision, then
    the terms are rounded to the input's dtype, as torch does).
    """
    _warn_size_mismatch(input, target)
    x, t = torch.broadcast_tensors(input, target)
    if weight is None:
        _reduction.check(reduction)
    else:
        _elementwise_weight(weight, input)
    delta = _real("huber_loss: delta", delta)
    return _autocast.run(input, _huber_loss, x, t, reduction, delta, weight)


def _kind(dtype: torch.dtype) -> int:
    """bool < integer < floating point < complex: a cast down this order is unsafe."""
    if dtype.is_complex:
        return 3
    if dtype.is_floating_point:
        return 2
    return 0 if dtype == torch.bool else 1


def _huber_loss(
    x: Tensor, t: Tensor, reduction: str, delta: float, weight: Tensor | None, ac: str | None
) -> Tensor:
    if ac is not None:  # fp32 policy on CPU and CUDA (the huber terms)
        x, t = _autocast.fp32(ac, x), _autocast.fp32(ac, t)
    if not delta > 0:  # nan too
        raise RuntimeError(f"huber_loss needs delta > 0, got delta={delta}")
    promoted = torch.promote_types(x.dtype, t.dtype)
    if _kind(promoted) > _kind(x.dtype):  # torch.can_cast, in a form torch.compile traces
        raise RuntimeError(
            f"huber_loss computes in {promoted} (input {x.dtype}, target {t.dtype}) and "
            f"returns the input's dtype, which cannot hold it; use a floating point input"
        )
    if not promoted.is_floating_point:
        raise NotImplementedError(
            f"huber_loss is not implemented for {x.dtype} inputs; use a floating point dtype"
        )
    terms_reduction = "none" if weight is not None else reduction
    if x.dtype != t.dtype:
        loss = _reduction.apply(_MixedDtypeHuber.apply(x, t, delta), terms_reduction)
    else:
        loss = _pointwise(x, t, "huber", delta, terms_reduction)
    if weight is None:
        return loss
    return _reduction.weighted(loss, weight, reduction, mean_by_weight=False, autocast=ac)
