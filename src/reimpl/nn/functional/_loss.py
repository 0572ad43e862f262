"""Loss functions, written from elementary tensor ops.

Every function takes torch's arguments in torch's order with torch's defaults.
Where torch's backward is *not* the derivative of its forward as written (the
clamped logs of BCE, the max-shifted log-softmax), a small ``autograd.Function``
gives the gradient torch gives; elsewhere autograd differentiates our forward,
which also makes double backward work.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from reimpl.kernels import cpu_fused
from reimpl.nn.functional import _reduction
from reimpl.nn.functional._cross_entropy_lean import CrossEntropyIndex, Rows, rows_impl

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _acc(x: Tensor) -> Tensor:
    """float16/bfloat16 are accumulated in float32, as torch's kernels do."""
    return x.float() if x.dtype in _LOW_PRECISION else x


def _check_not_differentiable(fn: str, **tensors: Tensor | None) -> None:
    # torch refuses gradients for class/positive weights; so do we, rather than
    # silently returning a gradient torch would never give.
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if t is not None and t.requires_grad:
            raise RuntimeError(
                f"{fn} is not differentiable with respect to '{name}'; "
                f"pass a tensor with requires_grad=False (e.g. {name}.detach())."
            )


def _warn_size_mismatch(input: Tensor, target: Tensor) -> None:
    if target.size() != input.size():
        warnings.warn(
            f"target size {tuple(target.size())} differs from input size {tuple(input.size())}; "
            "the two are broadcast together, which is likely not what you want. "
            "Make them the same size.",
            UserWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------- log-softmax


class _LogSoftmax(torch.autograd.Function):
    """log p_i = x_i - m - log(sum_j exp(x_j - m)),  m = max_j x_j.

    Backward: dx = g - exp(log p) * sum(g), from the saved output (so it is itself
    differentiable, for double backward).
    """

    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:  # type: ignore[override]
        ctx.dim = dim
        if x.numel() == 0:
            out = x.clone()
        else:
            a = _acc(x)
            shifted = a - a.amax(dim, keepdim=True)
            total = shifted.exp().sum(dim, keepdim=True)
            if a is not x and dim % max(x.dim(), 1) == max(x.dim(), 1) - 1:
                # torch's last-dim kernel rounds the sum and its log to the input's
                # 16-bit type before subtracting; other dims stay in float32.
                lse = total.to(x.dtype).float().log().to(x.dtype).float()
            else:
                lse = total.log()
            out = (shifted - lse).to(x.dtype)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        if out.numel() == 0:
            return g.clone(), None
        ga, oa = _acc(g), _acc(out)
        return (ga - oa.exp() * ga.sum(ctx.dim, keepdim=True)).to(g.dtype), None


def _softmax_dim(ndim: int) -> int:
    warnings.warn(
        "log_softmax without dim= picks a dimension implicitly, which is deprecated; pass dim=X.",
        UserWarning,
        stacklevel=3,
    )
    return 0 if ndim in (0, 1, 3) else 1


def log_softmax(
    input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None
) -> Tensor:
    """log(softmax(input)) along ``dim``, stable for large logits."""
    if dim is None:
        dim = _softmax_dim(input.dim())
    if dtype is not None:
        input = input.to(dtype)
    if not (input.is_floating_point() or input.is_complex()):
        raise NotImplementedError(f"log_softmax is not implemented for {input.dtype} inputs")
    ndim = max(input.dim(), 1)
    if not -ndim <= dim < ndim:
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{-ndim}, {ndim - 1}], "
            f"but got {dim})"
        )
    return _LogSoftmax.apply(input, dim)


# --------------------------------------------------------------------------- NLL / cross-entropy


def _class_index_target(input: Tensor, target: Tensor) -> None:
    """Shape and dtype rules for class-index targets (torch's, in torch's order)."""
    if input.dim() < 1:
        raise ValueError(f"Expected 1 or more dimensions (got {input.dim()})")
    if input.dim() != 1 and input.size(0) != target.size(0):
        raise ValueError(
            f"Expected input batch_size ({input.size(0)}) to match target batch_size "
            f"({target.size(0)})."
        )
    if target.dtype not in (torch.int64, torch.uint8):
        raise RuntimeError(
            f"class-index targets must be int64 (Long) or uint8 (Byte), but got {target.dtype}"
        )
    if input.dim() <= 2:
        if target.dim() > 1:
            raise RuntimeError(
                "class-index target must be 0-D or 1-D for a 1-D or 2-D input "
                f"(got a {target.dim()}-D target); multi-target is not supported"
            )
        if input.dim() == 1 and target.dim() == 1 and target.size(0) != 1:
            raise ValueError(
                "a 1-D input is one sample: its target must be 0-D or hold one class index, "
                f"but got a target of size {target.size(0)}"
            )
    else:
        expected = [input.size(0), *input.shape[2:]]
        if list(target.shape) != expected:
            raise RuntimeError(f"Expected target size {expected}, got {list(target.shape)}")


def _class_weight(weight: Tensor | None, input: Tensor, n_classes: int) -> None:
    if weight is None:
        return
    if weight.dim() != 1 or weight.numel() != n_classes:
        raise RuntimeError(
            f"weight must hold one value per class ({n_classes} classes) or be None, "
            f"but got a weight of shape {list(weight.shape)}"
        )
    if weight.dtype != input.dtype:
        raise RuntimeError(f"weight dtype {weight.dtype} does not match input dtype {input.dtype}")


def _check_target_range(target: Tensor, n_classes: int, ignore_index: int) -> None:
    if _compiling() or not target.numel():
        return
    t = target.long()
    bad = (t != ignore_index) & ((t < 0) | (t >= n_classes))
    if bool(bad.any()):
        raise IndexError(
            f"Target {int(t[bad][0])} is out of bounds: class indices must be in "
            f"[0, {n_classes - 1}] (or equal ignore_index={ignore_index})."
        )


def _picked(
    input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int
) -> tuple[Tensor, Tensor, Tensor]:
    """For each sample: the input at its target class, that class's weight, and a keep mask.

    Ignored samples get class 0 (any valid index) and weight 0, so nothing reads out of
    range; they are zeroed with ``where`` (not by multiplying) so an inf there stays out.
    """
    class_dim = 0 if input.dim() == 1 else 1
    n_classes = input.size(class_dim)
    target = target.long()
    if input.dim() == 1:
        target = target.reshape(())  # one sample: a 1-element target counts as 0-D
    keep = target != ignore_index
    _check_target_range(target, n_classes, ignore_index)
    safe = torch.where(keep, target, 0)
    x = input.gather(class_dim, safe.unsqueeze(class_dim)).squeeze(class_dim)
    w = torch.ones_like(x) if weight is None else weight[safe]
    return x, torch.where(keep, w, 0), keep


def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """loss_n = -w[t_n] * input[n, t_n]; 'mean' divides by sum_n w[t_n] over kept samples."""
    reduction = _reduction.resolve(reduction, size_average, reduce)
    _class_index_target(input, target)
    if not input.is_floating_point():
        raise NotImplementedError(f"nll_loss is not implemented for {input.dtype} inputs")
    _class_weight(weight, input, input.size(0 if input.dim() == 1 else 1))
    _check_not_differentiable("NLL loss", weight=weight)
    x, w, keep = _picked(input, target, weight, ignore_index)
    loss = torch.where(keep, -(w * x), 0)
    if reduction == "none":
        return loss
    # torch's CPU kernel accumulates float32 in float64 (its CPU accumulate type)
    acc = torch.float64 if loss.dtype == torch.float32 and loss.device.type == "cpu" else None
    if reduction == "sum":
        return _acc(loss).sum(dtype=acc).to(input.dtype)
    return (_acc(loss).sum(dtype=acc) / _acc(w).sum(dtype=acc)).to(input.dtype)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross-entropy of logits ``input`` against class indices or class probabilities.

    With class indices, ``nll_loss(log_softmax(input))``; label smoothing eps mixes in
    the uniform distribution: (1-eps)*nll + eps/C * sum_c -w_c log p_c.
    With probabilities q (same shape as input): -sum_c w_c q_c log p_c, q smoothed to
    (1-eps) q + eps/C; 'mean' divides by the number of samples, unweighted.
    """
    reduction = _reduction.resolve(reduction, size_average, reduce)
    class_dim = 0 if input.dim() == 1 else 1
    if input.shape == target.shape:
        return _cross_entropy_probs(
            input, target, weight, reduction, label_smoothing, class_dim, ignore_index
        )
    _class_index_target(input, target)
    if label_smoothing > 1.0:
        raise RuntimeError(f"label_smoothing must be in [0.0, 1.0], got {label_smoothing}")
    rows = _lean_rows(input, target, weight, ignore_index)
    if rows is not None:
        x = input if input.dim() == 2 else input.unsqueeze(0)
        t = target.reshape(x.shape[:1])
        out = CrossEntropyIndex.apply(
            x,
            t,
            weight,
            ignore_index,
            max(label_smoothing, 0.0),
            reduction,
            rows,
            _cross_entropy_composite,
        )
        return out.reshape(()) if input.dim() == 1 and reduction == "none" else out
    return _cross_entropy_composite(input, target, weight, ignore_index, reduction, label_smoothing)


def _lean_rows(
    input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int
) -> Rows | None:
    """The memory-lean implementation for (N, C) or (C) logits, or None for the composite.
    The checks the lean path would skip (weight shape/dtype, target range) are done here."""
    if input.dim() > 2 or input.numel() == 0 or target.dtype == torch.uint8 or _compiling():
        return None
    rows = rows_impl(input)
    if rows is None:
        return None
    _class_weight(weight, input, input.size(-1))
    _check_not_differentiable("cross_entropy", weight=weight)
    _check_target_range(target, input.size(-1), ignore_index)
    return rows


def _cross_entropy_composite(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
) -> Tensor:
    """nll_loss(log_softmax(input)) plus the smoothing term: any shape, any dtype."""
    class_dim = 0 if input.dim() == 1 else 1
    logp = log_softmax(input, class_dim)
    nll = nll_loss(logp, target, weight, ignore_index=ignore_index, reduction=reduction)
    if label_smoothing <= 0.0:
        return nll
    n_classes = input.size(class_dim)
    smooth = -_weighted_classes(logp, weight, class_dim).sum(class_dim)
    keep = target != ignore_index
    if input.dim() == 1:
        keep = keep.reshape(())
    smooth = torch.where(keep, smooth, 0)
    if reduction == "sum":
        smooth = smooth.sum()
    elif reduction == "mean":
        if weight is None:
            denom = keep.sum()
        else:
            if target.dtype == torch.uint8 and bool(keep.any()):
                # torch fails here (its gather wants int64 indices, and gets some unless
                # every sample is ignored); refuse too rather than differ
                raise RuntimeError(
                    "uint8 class-index targets are not supported with label_smoothing, weight "
                    "and reduction='mean'; convert the target with target.long()"
                )
            denom = torch.where(
                keep, weight[torch.where(keep, target.reshape(keep.shape).long(), 0)], 0
            ).sum()
        smooth = smooth.sum() / denom
    return (1 - label_smoothing) * nll + smooth * (label_smoothing / n_classes)


def _weighted_classes(x: Tensor, weight: Tensor | None, class_dim: int) -> Tensor:
    if weight is None:
        return x
    shape = [1] * x.dim()
    shape[class_dim] = weight.numel()
    return x * weight.view(shape)


def _cross_entropy_probs(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: str,
    label_smoothing: float,
    class_dim: int,
    ignore_index: int,
) -> Tensor:
    if not target.is_floating_point():
        raise RuntimeError(
            f"class-probability targets (same shape as input) must be floating point, "
            f"got {target.dtype}"
        )
    if ignore_index >= 0:
        raise RuntimeError(
            f"ignore_index={ignore_index} has no meaning for class-probability targets; "
            "leave it at its default"
        )
    if label_smoothing > 1.0:
        raise RuntimeError(f"label_smoothing must be in [0.0, 1.0], got {label_smoothing}")
    if input.dim() == 0:
        raise IndexError("cross_entropy needs an input with a class dimension, got a 0-D tensor")
    n_classes = input.size(class_dim)
    _class_weight(weight, input, n_classes)
    _check_not_differentiable("cross_entropy", weight=weight)
    logp = log_softmax(input, class_dim)
    if label_smoothing > 0.0:
        target = target * (1 - label_smoothing) + label_smoothing / n_classes
    loss = -_weighted_classes(logp * target, weight, class_dim).sum(class_dim)
    if reduction == "mean":
        return loss.sum() / (input.numel() // n_classes if n_classes else 0)
    return _reduction.apply(loss, reduction)


# --------------------------------------------------------------------------- binary cross-entropy

_BCE_EPS = 1e-12  # floor on x(1-x) in the input gradient, as torch's backward has
_LOG_FLOOR = -100.0  # torch clamps both logs at -100 so a 0 or 1 input gives a finite loss


class _BinaryCrossEntropy(torch.autograd.Function):
    """l = -w [t log x + (1-t) log(1-x)], logs clamped at -100.

    dl/dx = w (x - t) / max(x(1-x), 1e-12)      (not the derivative of the clamp)
    dl/dt = w (log(1-x) - log x)
    """

    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor, w: Tensor | None) -> Tensor:  # type: ignore[override]
        loss = (t - 1) * torch.log1p(-x).clamp_min(_LOG_FLOOR) - t * torch.log(x).clamp_min(
            _LOG_FLOOR
        )
        if w is not None:
            loss = loss * w
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
    if target.dtype != input.dtype:
        raise RuntimeError(f"target dtype {target.dtype} must match input dtype {input.dtype}")
    if weight is not None:
        weight = weight.expand(torch.broadcast_shapes(target.size(), weight.size()))
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
        if p is None:
            loss = (1 - t) * x - log_sig
        else:
            loss = (1 - t) * x - ((p - 1) * t + 1) * log_sig
        if w is not None:
            loss = loss * w
        ctx.save_for_backward(x, t, w, p)
        return loss

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
    if not target.is_floating_point() and input.is_floating_point():
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


# --------------------------------------------------------------------------- regression losses


def _regression_inputs(
    name: str, input: Tensor, target: Tensor, *, needs_float: bool = True
) -> tuple[Tensor, Tensor]:
    _warn_size_mismatch(input, target)
    x, t = torch.broadcast_tensors(input, target)
    if needs_float and not (
        torch.promote_types(x.dtype, t.dtype).is_floating_point
        or torch.promote_types(x.dtype, t.dtype).is_complex
    ):
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
        ctx.kernel = not _compiling() and cpu_fused.pointwise_usable(x, t)
        if ctx.kernel:  # one pass on CPU (reimpl.kernels.cpu_fused), same formula
            return cpu_fused.pointwise_forward(kind, x, t, b, reduction)
        d = x - t
        if kind == "mse":
            loss = d.mul_(d)
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
            gx, gt = cpu_fused.pointwise_backward(
                ctx.kind, x, t, g, b, per, ctx.needs_input_grad[1]
            )
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


def _weighted_regression_inputs(
    input: Tensor,
    target: Tensor,
    size_average: bool | None,
    reduce: bool | None,
    reduction: str,
    weight: Tensor | None,
) -> tuple[Tensor, Tensor, str]:
    """MSE's and L1's shared preamble, in torch's order: warn on a size mismatch, map the
    legacy flags, broadcast, check the element weight's size."""
    _warn_size_mismatch(input, target)
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_reduction(size_average, reduce)
    x, t = torch.broadcast_tensors(input, target)
    _elementwise_weight(weight, input)
    return x, t, reduction


def mse_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """l = (x - t)^2 (times ``weight``; the weighted mean divides by sum(weight))."""
    x, t, reduction = _weighted_regression_inputs(
        input, target, size_average, reduce, reduction, weight
    )
    if weight is not None:
        return _reduction.weighted((x - t) ** 2, weight, reduction, mean_by_weight=True)
    _reduction.check(reduction)
    x, t = _regression_inputs("mse_loss", x, t)
    return _Pointwise.apply(x, t, "mse", 0.0, reduction)


def l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """l = |x - t| (times ``weight``; the weighted mean divides by sum(weight))."""
    x, t, reduction = _weighted_regression_inputs(
        input, target, size_average, reduce, reduction, weight
    )
    if weight is not None:
        return _reduction.weighted(torch.abs(x - t), weight, reduction, mean_by_weight=True)
    _reduction.check(reduction)
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
    x, t = _regression_inputs("smooth_l1_loss", input, target)
    if beta < 0:
        raise RuntimeError(f"smooth_l1_loss needs beta >= 0, got beta={beta}")
    if beta == 0.0:
        # The quadratic piece is empty: plain L1 (and no 0/0 in the gradient).
        return _reduction.apply(torch.abs(x - t), reduction)
    return _Pointwise.apply(x, t, "smooth_l1", beta, reduction)


def huber_loss(
    input: Tensor,
    target: Tensor,
    reduction: str = "mean",
    delta: float = 1.0,
    weight: Tensor | None = None,
) -> Tensor:
    """l = 0.5 d^2 if |d| < delta else delta (|d| - 0.5 delta);  = delta * smooth_l1(beta=delta)."""
    _warn_size_mismatch(input, target)
    x, t = torch.broadcast_tensors(input, target)
    if weight is None:
        _reduction.check(reduction)
    x, t = _regression_inputs("huber_loss", x, t)
    if delta <= 0:
        raise RuntimeError(f"huber_loss needs delta > 0, got delta={delta}")
    if weight is not None:
        _elementwise_weight(weight, input)
        loss = _Pointwise.apply(x, t, "huber", delta, "none")
        return _reduction.weighted(loss, weight, reduction, mean_by_weight=False)
    return _Pointwise.apply(x, t, "huber", delta, reduction)
