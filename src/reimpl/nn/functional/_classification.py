"""Log-softmax, negative log-likelihood and cross-entropy, written from elementary tensor ops.

Every function takes torch's arguments in torch's order with torch's defaults. Under
``torch.autocast`` they follow torch's policy (see :mod:`._autocast`): ``nll_loss`` and
CPU ``cross_entropy`` run in float32; CUDA ``cross_entropy`` is torch's composite
(log-softmax in the input's dtype, a float32 NLL, float32 sums); ``log_softmax`` gives
float32 under CUDA autocast.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from reimpl.nn.functional import _autocast, _reduction
from reimpl.nn.functional._common import acc as _acc
from reimpl.nn.functional._common import check_not_differentiable as _check_not_differentiable
from reimpl.nn.functional._common import compiling as _compiling
from reimpl.nn.functional._common import to_dtype as _to_dtype
from reimpl.nn.functional._common import transformed as _transformed
from reimpl.nn.functional._common import vmapped as _vmapped
from reimpl.nn.functional._cross_entropy_lean import CrossEntropyIndex, Rows, rows_impl

# --------------------------------------------------------------------------- log-softmax


class _LogSoftmax(torch.autograd.Function):
    """log p_i = x_i - m - log(sum_j exp(x_j - m)),  m = max_j x_j.

    Backward: dx = g - exp(log p) * sum(g), from the saved output (so it is itself
    differentiable, for double backward). Forward mode (jvp, in ``_LogSoftmaxFwd``):
    dy = dx - sum(exp(log p) dx), torch's formula. ``setup_context`` and
    ``generate_vmap_rule`` make it usable under every ``torch.func`` transform (its ops
    are all elementary, none data-dependent).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, dim: int) -> Tensor:  # type: ignore[override]
        if x.numel() == 0:
            return x.clone()
        a = _acc(x)
        shifted = a - a.amax(dim, keepdim=True)
        total = shifted.exp().sum(dim, keepdim=True)
        if a is not x and dim % max(x.dim(), 1) == max(x.dim(), 1) - 1:
            # torch's last-dim kernel rounds the sum and its log to the input's
            # 16-bit type before subtracting; other dims stay in float32.
            lse = total.to(x.dtype).float().log().to(x.dtype).float()
        else:
            lse = total.log()
        return _to_dtype(shifted - lse, x.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.dim = inputs[1]
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        if out.numel() == 0:
            return g.clone(), None
        ga, oa = _acc(g), _acc(out)
        return (ga - oa.exp() * ga.sum(ctx.dim, keepdim=True)).to(g.dtype), None


class _LogSoftmaxFwd(_LogSoftmax):
    """With forward mode: for torch.func transforms and forward AD (dynamo, which the
    plain class serves under torch.compile, does not trace a custom ``jvp``)."""

    @staticmethod
    def jvp(ctx: Any, dx: Tensor, _: None) -> Tensor:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        if out.numel() == 0:
            return dx.clone()
        da, oa = _acc(dx), _acc(out)
        return (da - (oa.exp() * da).sum(ctx.dim, keepdim=True)).to(dx.dtype)


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
    ac = _autocast.active(input)
    if ac is None:
        return _log_softmax(input, dim, dtype)
    if ac == "cuda" and dtype is None and _autocast.eligible(input, ac):
        dtype = torch.float32  # CUDA autocast: log_softmax without a dtype gives float32
    with _autocast.off(ac):
        return _log_softmax(input, dim, dtype)


def _log_softmax(input: Tensor, dim: int, dtype: torch.dtype | None) -> Tensor:
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
    return (_LogSoftmaxFwd if _transformed() else _LogSoftmax).apply(input, dim)


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


def _class_weight(
    weight: Tensor | None, input: Tensor, n_classes: int, *, same_dtype: bool = True
) -> None:
    if weight is None:
        return
    if weight.dim() != 1 or weight.numel() != n_classes:
        raise RuntimeError(
            f"weight must hold one value per class ({n_classes} classes) or be None, "
            f"but got a weight of shape {list(weight.shape)}"
        )
    if same_dtype and weight.dtype != input.dtype:
        raise RuntimeError(f"weight dtype {weight.dtype} does not match input dtype {input.dtype}")


def _check_target_range(target: Tensor, n_classes: int, ignore_index: int) -> None:
    # a host read: skipped where it cannot run (compile, vmap); gather still bounds-checks
    if _compiling() or not target.numel() or _vmapped():
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
    input: Tensor, target: Tensor, weight: Tensor | None = None, size_average: bool | None = None,
    ignore_index: int = -100, reduce: bool | None = None, reduction: str = "mean",
) -> Tensor:  # fmt: skip
    """loss_n = -w[t_n] * input[n, t_n]; 'mean' divides by sum_n w[t_n] over kept samples."""
    reduction = _reduction.resolve(reduction, size_average, reduce)
    ac = _autocast.active(input)
    if ac is None:
        return _nll_loss(input, target, weight, ignore_index, reduction)
    with _autocast.off(ac):  # fp32 policy on CPU and CUDA
        return _nll_loss(
            _autocast.fp32(ac, input),
            target,
            _autocast.fp32_opt(ac, weight),
            ignore_index,
            reduction,
        )


def _nll_loss(
    input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, reduction: str
) -> Tensor:
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
    input: Tensor, target: Tensor, weight: Tensor | None = None, size_average: bool | None = None,
    ignore_index: int = -100, reduce: bool | None = None, reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:  # fmt: skip
    """Cross-entropy of logits ``input`` against class indices or class probabilities.

    With class indices, ``nll_loss(log_softmax(input))``; label smoothing eps mixes in
    the uniform distribution: (1-eps)*nll + eps/C * sum_c -w_c log p_c.
    With probabilities q (same shape as input): -sum_c w_c q_c log p_c, q smoothed to
    (1-eps) q + eps/C; 'mean' divides by the number of samples, unweighted.
    """
    reduction = _reduction.resolve(reduction, size_average, reduce)
    ac = _autocast.active(input)
    if ac is None:
        return _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing)
    with _autocast.off(ac):
        if ac == "cuda":  # not on CUDA's list: torch's composite, each part with its policy
            return _cross_entropy(
                input, target, weight, ignore_index, reduction, label_smoothing, cuda_autocast=True
            )
        return _cross_entropy(  # fp32 policy on CPU
            _autocast.fp32(ac, input),
            _autocast.fp32(ac, target),
            _autocast.fp32_opt(ac, weight),
            ignore_index,
            reduction,
            label_smoothing,
        )


def _cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    *,
    cuda_autocast: bool = False,
) -> Tensor:
    class_dim = 0 if input.dim() == 1 else 1
    if input.shape == target.shape:
        return _cross_entropy_probs(
            input,
            target,
            weight,
            reduction,
            label_smoothing,
            class_dim,
            ignore_index,
            cuda_autocast,
        )
    _class_index_target(input, target)
    if label_smoothing > 1.0:
        raise RuntimeError(f"label_smoothing must be in [0.0, 1.0], got {label_smoothing}")
    if cuda_autocast:
        return _cross_entropy_composite(
            input, target, weight, ignore_index, reduction, label_smoothing, cuda_autocast=True
        )
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
    """The memory-lean implementation for (N, C) or (C) logits, or None for the composite
    (also under torch.compile, and under torch.func transforms and forward-mode AD, which
    the composite supports). The checks the lean path would skip (weight shape/dtype,
    target range) are done here."""
    if input.dim() > 2 or input.numel() == 0 or target.dtype == torch.uint8 or _compiling():
        return None
    if _transformed():
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
    *,
    cuda_autocast: bool = False,
) -> Tensor:
    """nll_loss(log_softmax(input)) plus the smoothing term: any shape, any dtype.

    ``cuda_autocast``: as torch's composite runs under CUDA autocast (called with autocast
    off): log-probabilities in the input's dtype, the NLL with float32 log-probabilities and
    weight, the smoothing sums accumulated in float32.
    """
    class_dim = 0 if input.dim() == 1 else 1
    logp = _log_softmax(input, class_dim, None)
    sums = "cuda" if cuda_autocast else None
    if cuda_autocast:
        nll = _nll_loss(
            _autocast.fp32("cuda", logp),
            target,
            _autocast.fp32_opt("cuda", weight),
            ignore_index,
            reduction,
        )
    else:
        nll = _nll_loss(logp, target, weight, ignore_index, reduction)
    if label_smoothing <= 0.0:
        return nll
    n_classes = input.size(class_dim)
    terms = _weighted_classes(logp, weight, class_dim)
    smooth = -terms.sum(class_dim, dtype=_autocast.sum_dtype(sums, terms))
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
            picked = weight[torch.where(keep, target.reshape(keep.shape).long(), 0)]
            denom = torch.where(keep, picked, 0).sum(dtype=_autocast.sum_dtype(sums, picked))
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
    cuda_autocast: bool = False,
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
    _class_weight(weight, input, n_classes, same_dtype=False)  # torch promotes
    _check_not_differentiable("cross_entropy", weight=weight)
    logp = _log_softmax(input, class_dim, None)
    if label_smoothing > 0.0:
        target = target * (1 - label_smoothing) + label_smoothing / n_classes
    terms = _weighted_classes(logp * target, weight, class_dim)
    # under CUDA autocast torch's sums accumulate (and return) float32
    loss = -terms.sum(
        class_dim, dtype=_autocast.sum_dtype("cuda" if cuda_autocast else None, terms)
    )
    if reduction == "mean":
        return loss.sum() / (input.numel() // n_classes if n_classes else 0)
    return _reduction.apply(loss, reduction)
