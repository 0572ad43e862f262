"""Memory-lean cross-entropy for class-index targets on (N, C) logits.

The forward pass computes, per row, the loss *and* its gradient with respect to the logits,
in a buffer it allocates once; the backward pass only scales that buffer. Peak extra memory
is one logits-sized buffer (torch's composite keeps the log-probabilities, then allocates
the NLL gradient and the log-softmax gradient: about three).

With p = softmax(x), eps the label smoothing, C classes, w the class weights (1 if none),
k_n = [t_n != ignore_index] and W the 'mean' denominator (sum of k_n w_{t_n}):

    loss_n = k_n [(1 - eps) w_{t_n} (lse_n - x_{n,t_n}) + eps/C sum_c w_c (lse_n - x_{n,c})]
    dloss_n/dx_{n,j} = k_n [p_j ((1 - eps) w_{t_n} + eps/C sum_c w_c)
                            - (1 - eps) w_{t_n} [j = t_n] - eps/C w_j]

Three implementations of the per-row step share this Function: a C kernel
(``reimpl.kernels.cpu_cross_entropy``; plain contiguous float32/float64 CPU logits, one
pass per row where torch ops take one per op), a Triton kernel (``reimpl.kernels``; CUDA,
all float dtypes) and eager torch ops (everything else of float32/float64: CUDA without
Triton, strided logits, no C compiler, ``REIMPL_DISABLE_CPU_FUSED=1``). Double backward
(``create_graph=True``) differentiates the composite form instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from reimpl.kernels import cpu_cross_entropy, triton_available
from reimpl.nn.functional._common import to_dtype

Rows = Callable[..., tuple[Tensor, Tensor | None]]


def _rows_eager(
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
    """Per-row losses and, if ``need_grad``, the logits gradient times ``scale`` (one
    factor, or (n, 1)); ``in_place``: the gradient overwrites ``x`` (the caller's logits
    are dead), so no second logits-sized buffer."""
    if need_grad and scale is None:
        raise ValueError("a gradient of the rows needs a scale (shape (1,) or (n, 1))")
    c = x.shape[1]
    keep = (t != ignore_index).unsqueeze(1)
    safe = torch.where(keep.squeeze(1), t, 0).unsqueeze(1)
    m = x.amax(1, keepdim=True)
    # everything read from the logits comes before they may be overwritten
    x_t = x.gather(1, safe)
    wx = (x @ weight if weight is not None else x.sum(1)).unsqueeze(1) if smoothing > 0 else None
    e = x.sub_(m) if in_place else x - m
    e.exp_()
    s = e.sum(1, keepdim=True)
    lse = m + s.log()
    w_t = (weight[safe] if weight is not None else torch.ones_like(lse)) * keep
    w_sum = weight.sum() if weight is not None else c
    loss = (1 - smoothing) * w_t * (lse - x_t)
    if wx is not None:
        loss = loss + (smoothing / c) * (lse * w_sum - wx)
    # ignored rows are 0 even when their logits are not finite
    loss = torch.where(keep, loss, 0).squeeze(1)
    if not need_grad or scale is None:
        return loss, None
    # the buffer `e` becomes the gradient: p * coeff, minus the one-hot and smoothing terms
    coeff = ((1 - smoothing) * w_t + (smoothing / c) * w_sum * keep) * scale
    e.mul_(coeff / s)
    e.scatter_add_(1, safe, (-(1 - smoothing) * w_t * scale).to(e.dtype))
    if smoothing > 0:
        row = weight if weight is not None else torch.ones(c, dtype=x.dtype, device=x.device)
        e.sub_((smoothing / c) * row.unsqueeze(0) * keep * scale)
    return loss, e


def _rows_triton(*args: Any, in_place: bool = False) -> tuple[Tensor, Tensor | None]:
    from reimpl.kernels.triton_cross_entropy import cross_entropy_rows

    return cross_entropy_rows(*args, in_place=in_place)


def rows_impl(x: Tensor) -> Rows | None:
    """The per-row implementation for ``x``, or None when only the composite form fits.
    (The callers keep to the composite under torch.compile and torch.func, so the C rows
    are never traced; ``cpu_cross_entropy.rows`` still hands a traced call to the eager
    rows.)"""
    if triton_available(x) and x.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return _rows_triton
    if x.dtype in (torch.float32, torch.float64):
        if cpu_cross_entropy.takes(x if x.dim() == 2 else x.unsqueeze(0), None):
            return cpu_cross_entropy.rows
        return _rows_eager
    return None


class CrossEntropyIndex(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        target: Tensor,
        weight: Tensor | None,
        ignore_index: int,
        smoothing: float,
        reduction: str,
        rows: Rows,
        composite: Callable[..., Tensor],
    ) -> Tensor:
        t = target.long()
        keep = t != ignore_index
        acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        denom = scale = torch.ones((), dtype=acc, device=x.device)
        if reduction == "mean":
            w_t = weight[torch.where(keep, t, 0)].to(acc) if weight is not None else keep.to(acc)
            denom = torch.where(keep, w_t, 0).sum()
            # every sample ignored: 'mean' is nan, but (as in torch) the gradient is 0
            scale = 1 / torch.where(denom == 0, 1, denom)
        loss, grad = rows(
            x, t, weight, ignore_index, smoothing, scale.reshape(1), ctx.needs_input_grad[0]
        )
        if reduction == "mean":
            out = loss.sum() / denom
        elif reduction == "sum":
            out = loss.sum()
        else:
            out = loss
        ctx.save_for_backward(x, target, weight, grad)
        ctx.args = (ignore_index, smoothing, reduction, composite)
        ctx.scale = 1.0  # the factor already applied to `grad` in place
        return to_dtype(out, x.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, target, weight, grad = ctx.saved_tensors
        ignore_index, smoothing, reduction, composite = ctx.args
        none = (None,) * 7
        if torch.is_grad_enabled():
            # create_graph=True: the stored gradient is not itself differentiable
            with torch.enable_grad():
                loss = composite(x, target, weight, ignore_index, reduction, smoothing)
                (gx,) = torch.autograd.grad(loss, x, g, create_graph=True)
            return (gx, *none)
        if reduction == "none":
            return ((grad * g.unsqueeze(1)).to(x.dtype), *none)
        # scale in place: the buffer *is* the gradient; remember the factor so that a second
        # backward through a retained graph rescales instead of compounding
        factor = float(g)
        if factor != ctx.scale:
            grad.mul_(factor / ctx.scale)
            ctx.scale = factor
        return (grad, *none)
