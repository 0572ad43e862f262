"""Batch normalization of float32/float64 CPU tensors: one autograd Function over the C
kernels of :mod:`reimpl.kernels.cpu_batch_norm`.

The composite form (:func:`._batchnorm.normalize_channels`) lets autograd record every
step (centre, square, mean, scale, shift) and keeps their results for backward; here the
forward is one kernel call that saves only what the closed-form backward reads, the
input and the per-channel mean and inverse standard deviation (the weight is the
caller's), and the backward is one more. With x̂ = (x − mean)·invstd, per channel::

    dx = w·invstd·(dy − mean(dy) − x̂·mean(dy·x̂))   (training)
    dx = w·invstd·dy                                (evaluation: fixed statistics)
    dw = Σ dy·x̂,   db = Σ dy

Training also folds the batch statistics into ``running_mean``/``running_var`` in place
(the variance unbiased, as torch does). Double backward differentiates the composite
form (:func:`reimpl.nn.functional._normalize._composite_grads`), as layer norm's does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor

from reimpl.kernels import cpu_batch_norm
from reimpl.kernels.cpu_batch_norm import Layout
from reimpl.nn.functional._common import transformed
from reimpl.nn.functional._normalize import Plan, _composite_grads

Composite = Callable[[Tensor, Tensor | None, Tensor | None], Tensor]


class BatchNormPlan(NamedTuple):
    """One call's fixed arguments: how the kernels read the input, the mode, the running
    statistics (updated in training, used in evaluation) and the composite form of the
    same normalization, ``composite(x, weight, bias)`` (it leaves the running statistics
    alone), for double backward."""

    layout: Layout
    training: bool
    running_mean: Tensor | None
    running_var: Tensor | None
    momentum: float
    eps: float
    composite: Composite


def plan_for(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    composite: Composite,
) -> BatchNormPlan | None:
    """The plan when the kernels take this (already checked) call, else None: plain
    float32/float64 CPU tensors of one dtype, outside ``torch.func`` transforms,
    forward-mode AD and ``torch.compile``; in evaluation, running statistics that need
    no gradient (torch's are not differentiable there; the composite form's are)."""
    if not cpu_batch_norm.usable(input, weight, bias, running_mean, running_var):
        return None
    if transformed():
        return None
    stats = (running_mean, running_var)
    if not training and any(t is not None and t.requires_grad for t in stats):
        return None
    at = cpu_batch_norm.read_layout(input)
    return BatchNormPlan(at, training, running_mean, running_var, momentum, eps, composite)


def batch_norm_kernels(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, plan: BatchNormPlan
) -> Tensor:
    """The normalization of :func:`plan_for`'s call: through :class:`BatchNormFunction`
    when a gradient is wanted, else one kernel call."""
    wanted = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, weight, bias)
    )
    if wanted:
        out: Tensor = BatchNormFunction.apply(input, weight, bias, plan)
        return out
    y, _, _ = _forward(input, weight, bias, plan, keep_stats=False)
    return y


def _forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    plan: BatchNormPlan,
    keep_stats: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(y, mean, invstd), with the running statistics updated in training (mean and
    invstd: see :func:`cpu_batch_norm.forward`)."""
    at = plan.layout
    xc = _in_format(x, at)
    y, mean, invstd, var_sum = cpu_batch_norm.forward(
        xc,
        weight,
        bias,
        plan.running_mean,
        plan.running_var,
        at,
        plan.training,
        plan.eps,
        keep_stats,
    )
    assert y is not None
    rm, rv = plan.running_mean, plan.running_var
    if plan.training and rm is not None and rv is not None:
        assert var_sum is not None and mean is not None
        count = at.n * at.s
        m = plan.momentum
        with torch.no_grad():
            rm.copy_(mean * m + rm * (1 - m))
            rv.copy_(var_sum.div_(count - 1).mul_(m) + rv * (1 - m))
    return y, mean, invstd


def _in_format(t: Tensor, at: Layout) -> Tensor:
    """``t`` dense in the layout's memory format (a copy only where it is not)."""
    if at.format is torch.contiguous_format:  # (the keyword costs more than the check)
        return t.contiguous()
    return t.contiguous(memory_format=at.format)


class BatchNormFunction(torch.autograd.Function):
    """y = x̂·weight + bias per channel (see the module docstring), in the layout's
    memory format."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, plan: BatchNormPlan
    ) -> Tensor:
        y, mean, invstd = _forward(x, weight, bias, plan)
        # bias is not saved: it enters linearly, so no gradient reads its value
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.bias_shape = None if bias is None else bias.shape
        ctx.plan = plan
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight, mean, invstd = ctx.saved_tensors
        plan: BatchNormPlan = ctx.plan
        has_bias = ctx.bias_shape is not None
        need = (
            ctx.needs_input_grad[0],
            weight is not None and ctx.needs_input_grad[1],
            has_bias and ctx.needs_input_grad[2],
        )
        at = plan.layout
        dyc = _in_format(dy, at)
        if torch.is_grad_enabled() or not cpu_batch_norm.usable(dyc):
            # create_graph (or an upstream gradient the kernel cannot read): the
            # composite form's gradients, differentiable; a zero stands in for the bias
            bias = x.new_zeros(ctx.bias_shape).requires_grad_() if has_bias else None
            inputs = (x, weight, bias)
            # (_composite_grads reads only the plan's composite form)
            return (*_composite_grads(cast(Plan, plan), inputs, dy, need), None)
        xc = _in_format(x, at)
        dx, dw, db = cpu_batch_norm.backward(xc, dyc, weight, mean, invstd, at, plan.training, need)
        if dw is not None:
            dw = dw.view(weight.shape)
        if db is not None:
            db = db.view(ctx.bias_shape)
        return dx, dw, db, None
