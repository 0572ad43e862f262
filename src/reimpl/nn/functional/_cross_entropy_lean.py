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

Double backward (``create_graph=True``) differentiates the composite form again instead.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


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
        composite: Any,
    ) -> Tensor:
        c = x.shape[1]
        t = target.long()
        keep = t != ignore_index
        safe = torch.where(keep, t, 0).unsqueeze(1)
        need_grad = ctx.needs_input_grad[0]

        m = x.amax(1, keepdim=True)
        e = x - m
        e.exp_()
        s = e.sum(1, keepdim=True)
        lse = m + s.log()
        w_t = (weight[safe] if weight is not None else torch.ones_like(lse)) * keep.unsqueeze(1)
        loss = (1 - smoothing) * w_t * (lse - x.gather(1, safe))
        if smoothing > 0:
            w_sum = weight.sum() if weight is not None else c
            wx = x @ weight if weight is not None else x.sum(1)
            smooth = lse * w_sum - wx.unsqueeze(1)
            loss = loss + (smoothing / c) * smooth
        # ignored rows are 0 even when their logits are not finite
        loss = torch.where(keep, loss.squeeze(1), 0)
        if reduction == "mean":
            denom = w_t.sum()
            out = loss.sum() / denom
        elif reduction == "sum":
            denom = None
            out = loss.sum()
        else:
            denom = None
            out = loss

        grad = None
        if need_grad:
            if denom is not None:
                # every sample ignored: 'mean' is nan, but (as in torch) the gradient is 0
                denom = torch.where(denom == 0, 1, denom)
            # p * r_n / (W) - the one-hot and smoothing terms, all in the buffer `e`
            coeff = (1 - smoothing) * w_t
            if smoothing > 0:
                coeff = coeff + (smoothing / c) * (w_sum * keep.unsqueeze(1))
            if denom is not None:
                coeff = coeff / denom
            e.mul_(coeff / s)
            hit = -(1 - smoothing) * w_t
            if denom is not None:
                hit = hit / denom
            e.scatter_add_(1, safe, hit.to(e.dtype))
            if smoothing > 0:
                row = (
                    weight if weight is not None else torch.ones(c, dtype=x.dtype, device=x.device)
                )
                per = (smoothing / c) * row.unsqueeze(0) * keep.unsqueeze(1)
                e.sub_(per / denom if denom is not None else per)
            grad = e
        ctx.save_for_backward(x, target, weight, grad)
        ctx.args = (ignore_index, smoothing, reduction, composite)
        ctx.scale = 1.0  # the factor already applied to `grad` in place
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, target, weight, grad = ctx.saved_tensors
        ignore_index, smoothing, reduction, composite = ctx.args
        none = (None,) * 6
        if torch.is_grad_enabled():
            # create_graph=True: the stored gradient is not itself differentiable
            with torch.enable_grad():
                loss = composite(x, target, weight, ignore_index, reduction, smoothing)
                (gx,) = torch.autograd.grad(loss, x, g, create_graph=True)
            return (gx, *none)
        if reduction == "none":
            return (grad * g.unsqueeze(1), *none)
        # scale in place: the buffer *is* the gradient; remember the factor so that a second
        # backward through a retained graph rescales instead of compounding
        factor = float(g)
        if factor != ctx.scale:
            grad.mul_(factor / ctx.scale)
            ctx.scale = factor
        return (grad, *none)
