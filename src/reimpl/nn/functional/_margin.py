"""Margin and embedding losses: ranking, hinge, soft margin, multi-label soft margin,
cosine embedding and the triplet losses (the multi-class hinges are in :mod:`._multi_margin`).

Most are compositions of elementary ops in torch too, written here as the same ops in the
same order: values and autograd's gradients are torch's, and every ``torch.func`` transform
applies. Two are torch kernels with their own backward, mirrored by autograd Functions whose
backward is the kernel's formula in elementary ops (so double backward follows): the soft
margin loss, and the log-sigmoid inside the multi-label soft margin loss. Under ``torch.func``
transforms and forward-mode AD the soft margin loss takes its composite form.

Under ``torch.autocast`` (see :mod:`._autocast`): the ranking, hinge, soft margin, cosine
embedding and triplet losses are fp32 on CPU and CUDA; the multi-label soft margin loss and
the triplet loss with a distance function are torch's Python code, not listed: on CPU they
run as they are, on CUDA their sums are float32 (and the default distance's norm, see
:mod:`._distance`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from reimpl.nn.functional import _autocast, _reduction
from reimpl.nn.functional._binary import _log_sigmoid
from reimpl.nn.functional._common import acc as _acc
from reimpl.nn.functional._common import check_not_differentiable as _check_not_differentiable
from reimpl.nn.functional._common import compiling as _compiling
from reimpl.nn.functional._common import to_dtype as _to_dtype
from reimpl.nn.functional._common import transformed as _transformed
from reimpl.nn.functional._distance import pairwise_distance
from reimpl.nn.functional._regression import _kind

# torch adds a float 1e-12 to the squared norms: as a double, float32's nearest to 1e-12
_COSINE_EPS = 9.999999960041972e-13


# --------------------------------------------------------------------------- ranking, hinge


def margin_ranking_loss(
    input1: Tensor, input2: Tensor, target: Tensor, margin: float = 0,
    size_average: bool | None = None, reduce: bool | None = None, reduction: str = "mean",
) -> Tensor:  # fmt: skip
    """l = max(0, -y (x1 - x2) + margin): y = 1 asks x1 to rank above x2 by ``margin``."""
    reduction = _reduction.resolve_enum(reduction, size_average, reduce)
    if not input1.dim() == input2.dim() == target.dim():
        raise RuntimeError(
            "margin_ranking_loss needs input1, input2 and target of the same number of "
            f"dimensions, got sizes {tuple(input1.shape)}, {tuple(input2.shape)} and "
            f"{tuple(target.shape)}"
        )
    return _autocast.run_fp32(  # fp32 policy on CPU and CUDA
        input1, _margin_ranking_loss, input1, input2, target, margin, reduction
    )


def _margin_ranking_loss(
    input1: Tensor, input2: Tensor, target: Tensor, margin: float, reduction: str
) -> Tensor:
    diff = input1 - input2  # right operand first, as torch's C++ evaluates it
    loss = (-target * diff + margin).clamp_min(0)
    return _reduction.apply(loss, reduction)


def hinge_embedding_loss(
    input: Tensor, target: Tensor, margin: float = 1.0, size_average: bool | None = None,
    reduce: bool | None = None, reduction: str = "mean",
) -> Tensor:  # fmt: skip
    """l = x where y = 1, max(0, margin - x) where y = -1 (x a distance; both terms where y
    is neither, as torch has it)."""
    reduction = _reduction.resolve_enum(reduction, size_average, reduce)
    return _autocast.run_fp32(  # fp32 policy on CPU and CUDA
        input, _hinge_embedding_loss, input, target, margin, reduction
    )


def _hinge_embedding_loss(input: Tensor, target: Tensor, margin: float, reduction: str) -> Tensor:
    zeros = torch.zeros_like(input)
    # torch's C++ forms margin - x in x's dtype (a fill, then a subtraction)
    margin_term = torch.where(
        target != 1, (torch.full_like(input, margin) - input).clamp_min(0), zeros
    )
    self_term = torch.where(target != -1, input, zeros)
    return _reduction.apply(margin_term + self_term, reduction)


# --------------------------------------------------------------------------- soft margin


class _SoftMargin(torch.autograd.Function):
    """l = log(1 + e^{-y x}), each step rounded into x's dtype (torch writes in place);

    dl/dx = -y z / (1 + z) * g,  z = e^{-y x}     (torch's backward formula and rounding)

    The backward is elementary ops on the saved inputs, so it is differentiable again.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor, reduction: str) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, y)
        ctx.reduction = reduction
        loss = torch.neg(x).mul_(y)
        loss = loss.exp_()  # (then log1p out of place for torch.compile: see _common.to_dtype)
        return _reduction.apply(torch.log1p(loss) if _compiling() else loss.log1p_(), reduction)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        x, y = ctx.saved_tensors
        # C++'s 1.0 / 0 is inf (an empty input: nothing to scale)
        norm = 1.0 if ctx.reduction != "mean" else 1.0 / x.numel() if x.numel() else math.inf
        z = torch.exp(-y * x)
        # each product is rounded into x's dtype where torch's in-place steps round it, and
        # so is the scale (a C++ scalar op on a 16-bit tensor rounds the scalar first)
        gx = (y * z).to(x.dtype) * float(torch.tensor(-norm, dtype=x.dtype))
        gx = (gx / (z + 1)).to(x.dtype)
        return (gx * g).to(x.dtype), None, None


def soft_margin_loss(
    input: Tensor, target: Tensor, size_average: bool | None = None, reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:  # fmt: skip
    """l = log(1 + exp(-y x)): a smooth two-class hinge, y in {-1, 1}."""
    reduction = _reduction.resolve_enum(reduction, size_average, reduce)
    _check_not_differentiable("soft_margin_loss", target=target)
    return _autocast.run_fp32(  # fp32 policy on CPU and CUDA
        input, _soft_margin_loss, input, target, reduction
    )


def _soft_margin_loss(input: Tensor, target: Tensor, reduction: str) -> Tensor:
    # torch writes -x * y into a tensor like x: y must broadcast to x, into x's dtype
    shape = torch.broadcast_shapes(input.shape, target.shape)
    if shape != input.shape:
        raise RuntimeError(
            f"soft_margin_loss: target of size {tuple(target.shape)} broadcasts the input of "
            f"size {tuple(input.shape)} to {tuple(shape)}; the target must broadcast to the "
            "input's size"
        )
    promoted = torch.promote_types(input.dtype, target.dtype)
    if _kind(promoted) > _kind(input.dtype):  # torch.can_cast, in a form torch.compile traces
        raise RuntimeError(
            f"soft_margin_loss computes in {promoted} (input {input.dtype}, target "
            f"{target.dtype}) and returns the input's dtype, which cannot hold it; use a "
            "floating point input"
        )
    if not _transformed():
        return _SoftMargin.apply(input, target, reduction)
    # torch.func / forward AD: the same terms as out-of-place ops every transform supports
    loss = torch.log1p(torch.exp((-input * target).to(input.dtype)))
    return _reduction.apply(loss, reduction)


# --------------------------------------------------------------------------- multi-label soft


class _LogSigmoid(torch.autograd.Function):
    """log sigmoid(x) = min(x, 0) - log1p(e^{-|x|}), in float32 for 16-bit x (torch's kernel
    rounds once). d/dx = sigmoid(-x), written as torch's backward: with z = e^{-|x|},
    z / (1 + z) for x >= 0 and 1 - z / (1 + z) below (1/2 at 0, where autograd through the
    forward would give a one-sided slope). ``setup_context`` and ``generate_vmap_rule``
    serve every ``torch.func`` transform; forward mode (``jvp``) is in the subclass."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:  # type: ignore[override]
        return _to_dtype(_log_sigmoid(_acc(x)), x.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def _dx(x: Tensor, g: Tensor) -> Tensor:
        xa = _acc(x)
        # torch keeps e^{-|x|} from the forward in x's dtype
        z = torch.exp(-torch.abs(xa)).to(x.dtype).to(xa.dtype)
        below = xa < 0
        slope = below.to(xa.dtype) - torch.where(below, 1.0, -1.0) * (z / (1 + z))
        return (slope * _acc(g)).to(g.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return _LogSigmoid._dx(x, g)


class _LogSigmoidFwd(_LogSigmoid):
    """With forward mode, for torch.func and forward AD (dynamo does not trace ``jvp``)."""

    @staticmethod
    def jvp(ctx: Any, dx: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return _LogSigmoid._dx(x, dx)


def log_sigmoid(x: Tensor) -> Tensor:
    fn = _LogSigmoidFwd if _transformed() else _LogSigmoid
    return fn.apply(x)


def multilabel_soft_margin_loss(
    input: Tensor, target: Tensor, weight: Tensor | None = None, size_average: bool | None = None,
    reduce: bool | None = None, reduction: str = "mean",
) -> Tensor:  # fmt: skip
    """Per sample, the mean over the C classes (last dimension) of
    -w [y log sigmoid(x) + (1 - y) log sigmoid(-x)]: one logistic loss per label."""
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_reduction(size_average, reduce)
    return _autocast.run(input, _multilabel_soft_margin_loss, input, target, weight, reduction)


def _multilabel_soft_margin_loss(
    input: Tensor, target: Tensor, weight: Tensor | None, reduction: str, ac: str | None
) -> Tensor:
    loss = -(target * log_sigmoid(input) + (1 - target) * log_sigmoid(-input))
    if weight is not None:
        loss = loss * weight
    class_dim = input.dim() - 1
    n_classes = input.size(class_dim)
    # CUDA autocast sums 16-bit tensors in float32
    loss = loss.sum(dim=class_dim, dtype=_autocast.sum_dtype(ac, loss)) / n_classes
    # torch checks the reduction only here, once the terms are computed
    if reduction == "sum":
        return torch.sum(loss, dtype=_autocast.sum_dtype(ac, loss))
    _reduction.check(reduction)
    return _reduction.apply(loss, reduction)


# --------------------------------------------------------------------------- cosine embedding


def cosine_embedding_loss(
    input1: Tensor, input2: Tensor, target: Tensor, margin: float = 0,
    size_average: bool | None = None, reduce: bool | None = None, reduction: str = "mean",
) -> Tensor:  # fmt: skip
    """l = 1 - cos(x1, x2) where y = 1, max(0, cos(x1, x2) - margin) where y = -1 (0 for any
    other y); cos over the last dimension, with 1e-12 added to each squared norm."""
    reduction = _reduction.resolve_enum(reduction, size_average, reduce)
    return _autocast.run_fp32(  # fp32 policy on CPU and CUDA
        input1, _cosine_embedding_loss, input1, input2, target, margin, reduction
    )


def _cosine_embedding_loss(
    input1: Tensor, input2: Tensor, target: Tensor, margin: float, reduction: str
) -> Tensor:
    dim = target.dim()
    if dim not in (0, 1):
        raise RuntimeError(
            f"cosine_embedding_loss takes a 0-D or 1-D target (one label per pair), got a "
            f"{dim}-D one"
        )
    want = dim + 1  # a 1-D target labels a batch of vectors: 2-D inputs
    if input1.dim() != want or input2.dim() != want:
        raise RuntimeError(
            f"cosine_embedding_loss: a {dim}-D target needs {want}-D inputs, got inputs of "
            f"sizes {tuple(input1.shape)} and {tuple(input2.shape)}"
        )
    prod_sum = (input1 * input2).sum(dim)
    mag_square1 = (input1 * input1).sum(dim) + _COSINE_EPS
    mag_square2 = (input2 * input2).sum(dim) + _COSINE_EPS
    cos = prod_sum / (mag_square1 * mag_square2).sqrt()
    zeros = torch.zeros_like(cos)
    pos = 1 - cos
    neg = (cos - margin).clamp_min(0)
    loss = torch.where(target == 1, pos, zeros) + torch.where(target == -1, neg, zeros)
    return _reduction.apply(loss, reduction)


# --------------------------------------------------------------------------- triplet


def _check_margin(margin: float) -> None:
    if margin <= 0:
        raise ValueError(f"the triplet margin must be > 0, got margin={margin}")


def _check_triplet_dims(anchor: Tensor, positive: Tensor, negative: Tensor) -> None:
    if not anchor.dim() == positive.dim() == negative.dim():
        raise RuntimeError(
            "the triplet losses need anchor, positive and negative of the same number of "
            f"dimensions, got {anchor.dim()}-D, {positive.dim()}-D and {negative.dim()}-D"
        )


def triplet_margin_loss(
    anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 1.0, p: float = 2,
    eps: float = 1e-6, swap: bool = False, size_average: bool | None = None,
    reduce: bool | None = None, reduction: str = "mean",
) -> Tensor:  # fmt: skip
    """l = max(0, d(a, p) + margin - d(a, n)), d the ``pairwise_distance`` (p-norm, eps);
    ``swap`` (Balntas et al. 2016) uses min(d(a, n), d(p, n)) for the negative distance."""
    reduction = _reduction.resolve_enum(reduction, size_average, reduce)
    _check_margin(margin)
    return _autocast.run_fp32(  # fp32 policy on CPU and CUDA
        anchor, _triplet_margin_loss, anchor, positive, negative, margin, p, eps, swap, reduction
    )


def _triplet_margin_loss(
    anchor: Tensor, positive: Tensor, negative: Tensor, margin: float, p: float, eps: float,
    swap: bool, reduction: str,
) -> Tensor:  # fmt: skip
    _check_triplet_dims(anchor, positive, negative)
    d_pos = pairwise_distance(anchor, positive, p, eps)
    d_neg = pairwise_distance(anchor, negative, p, eps)
    if swap:
        d_neg = torch.minimum(d_neg, pairwise_distance(positive, negative, p, eps))
    loss = torch.clamp_min(margin + d_pos - d_neg, 0)
    return _reduction.apply(loss, reduction)


def triplet_margin_with_distance_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    *,
    distance_function: Callable[[Tensor, Tensor], Tensor] | None = None,
    margin: float = 1.0,
    swap: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """l = max(0, d(a, p) + margin - d(a, n)) for any distance d (default: the Euclidean
    ``pairwise_distance``); ``swap`` as in :func:`triplet_margin_loss`."""
    _reduction.check(reduction)
    _check_margin(margin)
    _check_triplet_dims(anchor, positive, negative)
    distance = pairwise_distance if distance_function is None else distance_function
    d_pos = distance(anchor, positive)
    d_neg = distance(anchor, negative)
    if swap:
        d_neg = torch.minimum(d_neg, distance(positive, negative))
    loss = torch.clamp_min(margin + d_pos - d_neg, 0)
    if reduction == "sum":  # CUDA autocast sums 16-bit tensors in float32
        return torch.sum(loss, dtype=_autocast.sum_dtype(_autocast.active(loss), loss))
    return _reduction.apply(loss, reduction)
