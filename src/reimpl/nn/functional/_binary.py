"""Binary cross-entropy, on probabilities and on logits, written from elementary tensor ops.

Where torch's backward is *not* the derivative of its forward as written (the clamped logs
of BCE), an ``autograd.Function`` gives the gradient torch gives. Under ``torch.autocast``
both follow torch's policy (see :mod:`._autocast`): float32 on CPU; on CUDA the logits form
runs in float32 and the probability form is refused, as torch refuses it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reimpl._compat import torch_at_least
from reimpl.kernels import cpu_bce
from reimpl.nn.functional import _autocast, _reduction
from reimpl.nn.functional._common import acc as _acc
from reimpl.nn.functional._common import check_not_differentiable as _check_not_differentiable
from reimpl.nn.functional._common import compiling as _compiling
from reimpl.nn.functional._common import to_dtype as _to_dtype
from reimpl.nn.functional._common import transformed as _transformed
from reimpl.nn.functional._common import vmapped as _vmapped

_BCE_EPS = 1e-12  # floor on x(1-x) in the input gradient, as torch's backward has
_LOG_FLOOR = -100.0  # torch clamps both logs at -100 so a 0 or 1 input gives a finite loss


class _BinaryCrossEntropy(torch.autograd.Function):
    """l = -w [t log x + (1-t) log(1-x)], logs clamped at -100 (w applied in x's dtype).

    dl/dx = w (x - t) / max(x(1-x), 1e-12)      (not the derivative of the clamp)
    dl/dt = w (log(1-x) - log x)
    Forward mode (jvp, in the subclass) uses the same derivatives, as torch's; ``setup_context``
    and ``generate_vmap_rule`` make it usable under every ``torch.func`` transform.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, t: Tensor, w: Tensor | None) -> Tensor:  # type: ignore[override]
        loss = (t - 1) * torch.log1p(-x).clamp_min(_LOG_FLOOR) - t * torch.log(x).clamp_min(
            _LOG_FLOOR
        )
        if w is not None:
            loss = _to_dtype(loss * w, x.dtype)  # torch scales its result in place
        return loss

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def _dx(x: Tensor, t: Tensor, gw: Tensor) -> Tensor:
        return gw * (x - t) / torch.clamp_min((1 - x) * x, _BCE_EPS)

    @staticmethod
    def _dt(x: Tensor, gw: Tensor) -> Tensor:
        # float32 for the 16-bit types: closer to torch's rounding there
        return (_acc(gw) * (torch.log1p(-_acc(x)) - torch.log(_acc(x)))).to(gw.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        x, t, w = ctx.saved_tensors
        gw = g if w is None else g * w
        gx = _BinaryCrossEntropy._dx(x, t, gw) if ctx.needs_input_grad[0] else None
        gt = _BinaryCrossEntropy._dt(x, gw) if ctx.needs_input_grad[1] else None
        return gx, gt, None


class _BinaryCrossEntropyFwd(_BinaryCrossEntropy):
    """With forward mode, for torch.func and forward AD (dynamo does not trace ``jvp``)."""

    @staticmethod
    def jvp(ctx: Any, dx: Tensor | None, dt: Tensor | None, _: None) -> Tensor:  # type: ignore[override]
        x, t, w = ctx.saved_tensors
        out = torch.zeros_like(x)
        if dx is not None:
            out = out + _BinaryCrossEntropy._dx(x, t, dx if w is None else dx * w)
        if dt is not None:
            out = out + _BinaryCrossEntropy._dt(x, dt if w is None else dt * w)
        return out


def _check_unit_interval(x: Tensor, what: str) -> None:
    # a host read: skipped where it cannot run (torch.compile, vmap)
    if _compiling() or x.numel() == 0 or _vmapped():
        return
    if not bool(((x >= 0) & (x <= 1)).all()):
        raise RuntimeError(f"all elements of {what} should be between 0 and 1")


def binary_cross_entropy(
    input: Tensor, target: Tensor, weight: Tensor | None = None, size_average: bool | None = None,
    reduce: bool | None = None, reduction: str = "mean",
) -> Tensor:  # fmt: skip
    """Binary cross-entropy between probabilities ``input`` and ``target`` in [0, 1]."""
    reduction = _reduction.resolve(reduction, size_average, reduce)
    if target.size() != input.size():
        raise ValueError(
            f"target size {tuple(target.size())} must equal input size {tuple(input.size())} "
            "(broadcasting is not supported here)"
        )
    if weight is not None:
        weight = weight.expand(torch.broadcast_shapes(target.size(), weight.size()))
    ac = _autocast.active(input)
    if ac is None:
        return _binary_cross_entropy(input, target, weight, reduction)
    if ac == "cuda":
        raise RuntimeError(
            "binary_cross_entropy / BCELoss is refused under CUDA autocast (as torch refuses "
            "it): a sigmoid followed by it is unsafe in 16 bits. Pass the logits to "
            "binary_cross_entropy_with_logits / BCEWithLogitsLoss instead, which autocast "
            "runs in float32."
        )
    with _autocast.off(ac):  # fp32 policy on CPU
        return _binary_cross_entropy(
            _autocast.fp32(ac, input),
            _autocast.fp32(ac, target),
            _autocast.fp32_opt(ac, weight),
            reduction,
        )


def _binary_cross_entropy(
    input: Tensor, target: Tensor, weight: Tensor | None, reduction: str
) -> Tensor:
    if target.dtype != input.dtype:
        raise RuntimeError(f"target dtype {target.dtype} must match input dtype {input.dtype}")
    if not input.is_floating_point():
        raise NotImplementedError(
            f"binary_cross_entropy is not implemented for {input.dtype} inputs: it takes "
            "probabilities (floating point, in [0, 1])"
        )
    _check_not_differentiable("binary_cross_entropy", weight=weight)
    _check_unit_interval(input, "input")
    _check_unit_interval(target, "target")
    fn = _BinaryCrossEntropyFwd if _transformed() else _BinaryCrossEntropy
    loss = fn.apply(input, target, weight)
    return _reduction.apply(loss, reduction)


def _log_sigmoid(x: Tensor) -> Tensor:
    # log σ(x) = min(x, 0) - log(1 + e^{-|x|}): never exponentiates a positive number.
    return torch.clamp_max(x, 0) - torch.log1p(torch.exp(-torch.abs(x)))


class _BinaryCrossEntropyWithLogits(torch.autograd.Function):
    """l = w [(1-t) x - (1 + (p-1) t) log σ(x)]

    dl/dx = w [(p t + 1 - t) σ(x) - p t]        (= w (σ(x) - t) without p)
    dl/dt = w [log σ(-x) - p log σ(x)]   (= -w x without p)
    Written out rather than left to autograd so that 16-bit gradients round as torch's do.
    With mixed dtypes each term is rounded where torch's in-place steps round it: the
    pos_weight factor into x's dtype, everything else into t's (the result's dtype).
    Forward mode (jvp, in the subclass) uses the same derivatives; ``setup_context`` and
    ``generate_vmap_rule`` make it usable under every ``torch.func`` transform.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        x: Tensor,
        t: Tensor,
        w: Tensor | None,
        p: Tensor | None,  # type: ignore[override]
    ) -> Tensor:
        log_sig = _log_sigmoid(x)
        if p is not None:
            log_sig = (((p - 1) * t + 1) * log_sig).to(x.dtype)
        loss = ((1 - t) * x).to(t.dtype) - log_sig
        if w is not None:
            loss = loss.to(t.dtype) * w
        return _to_dtype(loss, t.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def _dx(x: Tensor, t: Tensor, w: Tensor | None, p: Tensor | None, g: Tensor) -> Tensor:
        if p is None:
            gx = (torch.sigmoid(x) - t) * g
        else:
            pt = p * t
            gx = ((pt + 1 - t) * torch.sigmoid(x) - pt) * g
        return gx if w is None else gx * w

    @staticmethod
    def _dt(x: Tensor, w: Tensor | None, p: Tensor | None, g: Tensor) -> Tensor:
        # log σ(-x) - p log σ(x), as torch forms it: at x = ±inf the equal -x - (p-1) log σ(x)
        # would be inf - inf
        gt = -x * g if p is None else (_log_sigmoid(-x) - p * _log_sigmoid(x)) * g
        return gt if w is None else gt * w

    @staticmethod
    def backward(
        ctx: Any,
        g: Tensor,  # type: ignore[override]
    ) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, t, w, p = ctx.saved_tensors
        cls = _BinaryCrossEntropyWithLogits
        gx = cls._dx(x, t, w, p, g) if ctx.needs_input_grad[0] else None
        gt = cls._dt(x, w, p, g) if ctx.needs_input_grad[1] else None
        return gx, gt, None, None


class _BinaryCrossEntropyWithLogitsKernel(torch.autograd.Function):
    """The same loss and derivatives in one C pass each way on CPU (:mod:`reimpl.kernels.
    cpu_bce`), reduced inside, so the backward scales by one number. Taken only where
    :func:`cpu_bce.prepare` accepts the operands and no transform or compiler is active;
    a double backward computes with the composite's out-of-place derivatives, which
    autograd can follow.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        t: Tensor,
        w: Tensor | None,
        p: Tensor | None,
        at: cpu_bce.Periodic,
        reduction: str,
    ) -> Tensor:
        ctx.save_for_backward(x, t, w, p)
        ctx.at, ctx.reduction = at, reduction
        return cpu_bce.forward(x, t, at, reduction)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, t, w, p = ctx.saved_tensors
        need_x, need_t = ctx.needs_input_grad[:2]
        if not torch.is_grad_enabled():
            dx, dt = cpu_bce.backward(x, t, ctx.at, g, ctx.reduction, need_t)
            return dx if need_x else None, dt, None, None, None, None
        if ctx.reduction != "none":
            g = (g / x.numel() if ctx.reduction == "mean" else g).expand(x.shape)
        cls = _BinaryCrossEntropyWithLogits
        gx = cls._dx(x, t, w, p, g) if need_x else None
        gt = cls._dt(x, w, p, g) if need_t else None
        return gx, gt, None, None, None, None


class _BinaryCrossEntropyWithLogitsFwd(_BinaryCrossEntropyWithLogits):
    """With forward mode, for torch.func and forward AD (dynamo does not trace ``jvp``)."""

    @staticmethod
    def jvp(  # type: ignore[override]
        ctx: Any, dx: Tensor | None, dt: Tensor | None, _w: None, _p: None
    ) -> Tensor:
        x, t, w, p = ctx.saved_tensors
        cls = _BinaryCrossEntropyWithLogits
        out = torch.zeros_like(t)
        if dx is not None:
            out = out + cls._dx(x, t, w, p, dx)
        if dt is not None:
            out = out + cls._dt(x, w, p, dt)
        return out.to(t.dtype)


def binary_cross_entropy_with_logits(
    input: Tensor, target: Tensor, weight: Tensor | None = None, size_average: bool | None = None,
    reduce: bool | None = None, reduction: str = "mean", pos_weight: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """Sigmoid + binary cross-entropy in one stable expression; ``pos_weight`` p scales the
    positive term and broadcasts over the last (class) dimension."""
    reduction = _reduction.resolve(reduction, size_average, reduce)
    if target.size() != input.size():
        raise ValueError(
            f"target size {tuple(target.size())} must equal input size {tuple(input.size())}"
        )
    return _autocast.run_fp32(  # fp32 policy on CPU and CUDA
        input, _binary_cross_entropy_with_logits, input, target, weight, pos_weight, reduction
    )


def _binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
) -> Tensor:
    if not input.is_floating_point():
        raise NotImplementedError(
            f"binary_cross_entropy_with_logits is not implemented for {input.dtype} inputs: "
            "the logits must be floating point"
        )
    if not target.is_floating_point():
        # torch >= 2.14 stops at 1 - target for a bool target (NotImplementedError)
        kind = (
            NotImplementedError
            if target.dtype == torch.bool and torch_at_least(2, 14)
            else RuntimeError
        )
        raise kind(
            f"target must be floating point like the input ({input.dtype}), got {target.dtype}"
        )
    _check_not_differentiable(
        "binary_cross_entropy_with_logits", weight=weight, pos_weight=pos_weight
    )
    if not _transformed():  # (False under torch.compile, where prepare declines)
        at = cpu_bce.prepare(input, target, weight, pos_weight)
        if at is not None:
            return _BinaryCrossEntropyWithLogitsKernel.apply(
                input, target, weight, pos_weight, at, reduction
            )
    shape = input.shape
    for extra in (weight, pos_weight):
        if extra is not None:
            shape = torch.broadcast_shapes(shape, extra.shape)
    x, t = input.expand(shape), target.expand(shape)
    fn = _BinaryCrossEntropyWithLogitsFwd if _transformed() else _BinaryCrossEntropyWithLogits
    loss = fn.apply(x, t, weight, pos_weight)
    return _reduction.apply(loss, reduction)
