"""Binary cross-entropy, on probabilities and on logits, written from elementary tensor ops.

Where torch's backward is *not* the derivative of its forward as written (the clamped logs
of BCE), an ``autograd.Function`` gives the gradient torch gives. Under ``torch.autocast``
both follow torch's policy (see :mod:`._autocast`): float32 on CPU; on CUDA the logits form
runs in float32 and the probability form is refused, as torch refuses it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reimpl.nn.functional import _autocast, _reduction
from reimpl.nn.functional._common import acc as _acc
from reimpl.nn.functional._common import check_not_differentiable as _check_not_differentiable
from reimpl.nn.functional._common import compiling as _compiling

_BCE_EPS = 1e-12  # floor on x(1-x) in the input gradient, as torch's backward has
_LOG_FLOOR = -100.0  # torch clamps both logs at -100 so a 0 or 1 input gives a finite loss


class _BinaryCrossEntropy(torch.autograd.Function):
    """l = -w [t log x + (1-t) log(1-x)], logs clamped at -100 (w applied in x's dtype).

    dl/dx = w (x - t) / max(x(1-x), 1e-12)      (not the derivative of the clamp)
    dl/dt = w (log(1-x) - log x)
    """

    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor, w: Tensor | None) -> Tensor:  # type: ignore[override]
        loss = (t - 1) * torch.log1p(-x).clamp_min(_LOG_FLOOR) - t * torch.log(x).clamp_min(
            _LOG_FLOOR
        )
        if w is not None:
            loss = (loss * w).to(x.dtype)  # torch scales its result in place
        ctx.save_for_backward(x, t, w)
        return loss

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        x, t, w = ctx.saved_tensors
        gw = g if w is None else g * w
        gx = gt = None
        if ctx.needs_input_grad[0]:
            gx = gw * (x - t) / torch.clamp_min((1 - x) * x, _BCE_EPS)
        if ctx.needs_input_grad[1]:
            # float32 for the 16-bit types: closer to torch's rounding there
            gt = (_acc(gw) * (torch.log1p(-_acc(x)) - torch.log(_acc(x)))).to(gw.dtype)
        return gx, gt, None


def _check_unit_interval(x: Tensor, what: str) -> None:
    if _compiling() or x.numel() == 0:
        return
    if not bool(((x >= 0) & (x <= 1)).all()):
        raise RuntimeError(f"all elements of {what} should be between 0 and 1")


def binary_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
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
    loss = _BinaryCrossEntropy.apply(input, target, weight)
    return _reduction.apply(loss, reduction)


def _log_sigmoid(x: Tensor) -> Tensor:
    # log σ(x) = min(x, 0) - log(1 + e^{-|x|}): never exponentiates a positive number.
    return torch.clamp_max(x, 0) - torch.log1p(torch.exp(-torch.abs(x)))


class _BinaryCrossEntropyWithLogits(torch.autograd.Function):
    """l = w [(1-t) x - (1 + (p-1) t) log σ(x)]

    dl/dx = w [(p t + 1 - t) σ(x) - p t]        (= w (σ(x) - t) without p)
    dl/dt = w [-x - (p-1) log σ(x)]
    Written out rather than left to autograd so that 16-bit gradients round as torch's do.
    With mixed dtypes each term is rounded where torch's in-place steps round it: the
    pos_weight factor into x's dtype, everything else into t's (the result's dtype).
    """

    @staticmethod
    def forward(
        ctx,
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
        ctx.save_for_backward(x, t, w, p)
        return loss.to(t.dtype)

    @staticmethod
    def backward(
        ctx,
        g: Tensor,  # type: ignore[override]
    ) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, t, w, p = ctx.saved_tensors
        gx = gt = None
        if ctx.needs_input_grad[0]:
            if p is None:
                gx = (torch.sigmoid(x) - t) * g
            else:
                pt = p * t
                gx = ((pt + 1 - t) * torch.sigmoid(x) - pt) * g
            if w is not None:
                gx = gx * w
        if ctx.needs_input_grad[1]:
            gt = -x * g if p is None else (-x - (p - 1) * _log_sigmoid(x)) * g
            if w is not None:
                gt = gt * w
        return gx, gt, None, None


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    """Sigmoid + binary cross-entropy in one stable expression; ``pos_weight`` p scales the
    positive term and broadcasts over the last (class) dimension."""
    reduction = _reduction.resolve(reduction, size_average, reduce)
    if target.size() != input.size():
        raise ValueError(
            f"target size {tuple(target.size())} must equal input size {tuple(input.size())}"
        )
    ac = _autocast.active(input)
    if ac is None:
        return _binary_cross_entropy_with_logits(input, target, weight, pos_weight, reduction)
    with _autocast.off(ac):  # fp32 policy on CPU and CUDA
        return _binary_cross_entropy_with_logits(
            _autocast.fp32(ac, input),
            _autocast.fp32(ac, target),
            _autocast.fp32_opt(ac, weight),
            _autocast.fp32_opt(ac, pos_weight),
            reduction,
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
        raise RuntimeError(
            f"target must be floating point like the input ({input.dtype}), got {target.dtype}"
        )
    _check_not_differentiable(
        "binary_cross_entropy_with_logits", weight=weight, pos_weight=pos_weight
    )
    shape = input.shape
    for extra in (weight, pos_weight):
        if extra is not None:
            shape = torch.broadcast_shapes(shape, extra.shape)
    x, t = input.expand(shape), target.expand(shape)
    loss = _BinaryCrossEntropyWithLogits.apply(x, t, weight, pos_weight)
    return _reduction.apply(loss, reduction)
