"""Instance normalization, functional form (Ulyanov, Vedaldi & Lempitsky 2016, "Instance
Normalization: The Missing Ingredient for Fast Stylization").

Each (sample, channel) plane of an ``(N, C, *)`` input is normalized by its own mean and
*biased* variance, then scaled by ``weight`` and shifted by ``bias`` (one per channel).
Style transfer wants the contrast of each image gone, not the batch's, hence per-sample
statistics. Given running statistics, training moves them towards the batch average of the
per-sample statistics (variance unbiased, ``·n/(n-1)`` over the n spatial elements), and
``use_input_stats=False`` normalizes with them instead.

That is batch normalization of the ``(1, N·C, *)`` view with the per-channel tensors
repeated N times, and it is computed so, as torch computes it: the arithmetic is
:func:`reimpl.nn.functional._batchnorm.normalize_channels` (one formula for both layers),
and in training the N updated copies of each running statistic are averaged back into
it afterwards (an empty batch makes them NaN, as in torch). The output is contiguous
whatever the input's layout (torch's is).

Which dtypes go together is torch 2.13's CPU rule, checked against every combination of
float64/float32/float16/bfloat16/absent for the five tensors
(``tests/unit/test_instance_norm_extras.py``): ``weight`` and ``bias`` share the input's
dtype, or are float32 for a 16-bit input ("mixed"; then a lone float32 ``bias`` refuses
running statistics); the running statistics may have any dtype, except that when
``running_mean`` has the parameters' dtype ``running_var`` must have it too. The kernel
reads and updates them in the parameters' dtype. Unlike batch norm, ``eps`` is not
checked.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reimpl.kernels import cpu_norm
from reimpl.kernels.cpu_norm import GROUP, Layout
from reimpl.nn.functional import _autocast
from reimpl.nn.functional import _norm_composite as C
from reimpl.nn.functional._batchnorm import normalize_channels
from reimpl.nn.functional._common import compiling, to_dtype, transformed
from reimpl.nn.functional._normalize import Normalize, Plan

_HALVES = (torch.float16, torch.bfloat16)


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Instance normalization over the spatial dims of each (sample, channel) of ``input``.

    ``use_input_stats=True`` normalizes with each plane's statistics and, when running
    statistics are given, updates them in place: ``r = (1 - momentum)·r + momentum·b``,
    ``b`` the batch average of the planes' mean (unbiased variance).
    ``use_input_stats=False`` normalizes with the running statistics, which must be given.

    Under ``torch.autocast`` the arguments are used as they are (instance norm is on
    neither the CPU nor the CUDA autocast list); the arithmetic runs with autocast off.
    """
    args = (input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)
    ac = _autocast.active(input)
    if ac is None:
        return _instance_norm(*args)
    with _autocast.off(ac):
        return _instance_norm(*args)


def _check_spatial(input: Tensor) -> None:
    count = 1
    for s in input.shape[2:]:
        count *= s
    if count == 1:
        raise ValueError(
            "instance_norm needs more than one spatial element per (sample, channel) to "
            f"compute statistics (input of shape (N, C, *)), got input size {input.size()}"
        )


def _check_shapes(input: Tensor, tensors: dict[str, Tensor | None]) -> None:
    channels = input.size(1)
    for name, t in tensors.items():
        if t is not None and t.dim() > 1:
            raise RuntimeError(
                f"instance_norm: {name} must be a vector with one element per channel, "
                f"got a {t.dim()}-D tensor of shape {tuple(t.shape)}"
            )
    running_mean, weight = tensors["running_mean"], tensors["weight"]
    if running_mean is not None and tensors["running_var"] is None:
        # torch converts a lone running_mean of another dtype than weight's (or the
        # input's) alongside the missing running_var, and fails there, before the rest
        expected = (weight if weight is not None else input).dtype
        if running_mean.dtype != expected:
            raise RuntimeError(
                f"instance_norm: running_mean ({running_mean.dtype}) without running_var "
                f"cannot be converted to {expected}; give both running statistics"
            )
    for name, t in tensors.items():
        if t is not None and t.numel() != channels:
            raise RuntimeError(
                f"instance_norm: {name} should have one element per channel ({channels}, "
                f"dim 1 of input size {tuple(input.shape)}), got {t.numel()}"
            )


def _check_dtypes(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
) -> torch.dtype:
    """Refuse what torch's CPU kernel refuses; return the dtype batch statistics are kept in
    (float32 for "mixed" 16-bit inputs, else the input's)."""
    if not input.is_floating_point():
        raise NotImplementedError(
            f"instance_norm is only implemented for floating-point inputs, not {input.dtype}"
        )
    first = weight if weight is not None else bias
    mixed = first is not None and first.dtype != input.dtype
    if mixed and input.dtype not in _HALVES:
        assert first is not None
        raise RuntimeError(
            f"instance_norm: a {input.dtype} input needs weight and bias of the same dtype, "
            f"got {first.dtype} (only 16-bit inputs may take float32 parameters)"
        )
    param_dtype = torch.float32 if mixed else input.dtype
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != param_dtype:
            raise RuntimeError(
                f"instance_norm: {name} is {t.dtype} but the parameters must all be "
                f"{param_dtype} here (a {input.dtype} input; weight and bias share a dtype)"
            )
    if mixed and weight is None and running_mean is not None:
        raise RuntimeError(
            "instance_norm: a 16-bit input with a float32 bias and no weight cannot take "
            "running statistics (give a float32 weight too, or a bias of the input's dtype)"
        )
    same = running_mean is not None and running_mean.dtype == param_dtype
    if same and running_var is not None and running_var.dtype != param_dtype:
        raise RuntimeError(
            f"instance_norm: running_mean is {param_dtype}, so running_var must be "
            f"{param_dtype} too, got {running_var.dtype}"
        )
    return param_dtype


def _instance_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    use_input_stats: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    if use_input_stats:
        _check_spatial(input)
    elif running_mean is None or running_var is None:
        raise RuntimeError(
            "instance_norm: use_input_stats=False normalizes with the running statistics, "
            "so running_mean and running_var must both be given"
        )
    if input.dim() < 2:
        raise IndexError(
            f"instance_norm: input needs a channel dimension (dim 1), got a {input.dim()}-D input"
        )
    _check_shapes(
        input,
        {"weight": weight, "bias": bias, "running_mean": running_mean, "running_var": running_var},
    )
    if (running_mean is None) != (running_var is None):
        raise ValueError("instance_norm: give running_mean and running_var together, or neither")
    stat_dtype = _check_dtypes(input, running_mean, running_var, weight, bias)

    n, c = input.shape[:2]
    x = _kernel_input(input, running_mean, weight, bias, use_input_stats)
    if x is not None:
        # no running statistics to update: group norm with a group per channel, through
        # the C kernels (contiguous out, as torch's instance norm gives it)
        def composite(x: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
            return C.group_norm(x, c, w, b, eps, keep_format=False)

        layout = Layout(n * c, c, 1, input[0, 0].numel())
        return Normalize.apply(x, weight, bias, Plan(layout, eps, GROUP, composite))
    # torch repeats the running statistics in the parameters' dtype, updates the copies
    # there, and averages them there before storing the result in the statistics' own
    work = [
        None if t is None else t.to(stat_dtype).reshape(-1).repeat(n)
        for t in (running_mean, running_var)
    ]
    w, b = (None if t is None else t.reshape(-1).repeat(n) for t in (weight, bias))
    if use_input_stats and input.numel() and not transformed():
        flat = input.contiguous().view(n * c, -1)
        out, mean, var = _InstanceNorm.apply(flat, w, b, eps, stat_dtype)
        with torch.no_grad():
            count = flat.size(1)
            for copies, batch in zip(work, (mean, var * (count / (count - 1))), strict=True):
                if copies is not None:
                    copies.copy_(momentum * batch + (1 - momentum) * copies.to(batch.dtype))
    else:  # torch.func transforms, forward AD, evaluation, empty inputs
        flat = input.contiguous().view(1, n * c, *input.shape[2:])
        out = normalize_channels(
            flat, work[0], work[1], w, b, use_input_stats, momentum, eps, stat_dtype
        )
    if not use_input_stats:  # evaluation leaves the statistics as they are
        return out.view(input.shape)
    with torch.no_grad():
        for stat, copies in zip((running_mean, running_var), work, strict=True):
            if stat is not None and copies is not None:
                stat.copy_(copies.view(n, c).mean(0))
    return out.view(input.shape)


# ----------------------------------------------------------------- the training path


def _kernel_input(
    input: Tensor,
    running_mean: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    use_input_stats: bool,
) -> Tensor | None:
    """The contiguous input when the C group-norm kernels compute this call (batch
    statistics and none running, float32/float64 CPU tensors of one dtype, outside
    transforms and compile), else None; the copy of a channels-last input is made only
    once the cheap conditions hold. The kernels add eps and scale as torch's batch-norm
    kernel does here (eps in double, x·(invstd·w) + (b − mean·invstd·w)); 16-bit inputs
    stay on :class:`_InstanceNorm`, which keeps their statistics as torch's instance norm
    does (group norm's differ)."""
    if not (
        use_input_stats
        and running_mean is None
        and input.numel() > 0
        and input.dtype in (torch.float32, torch.float64)
        and not transformed()
        and not compiling()
    ):
        return None
    x = input.contiguous()
    return x if cpu_norm.usable(x, weight, bias) else None


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _HALVES else dtype


def _row_stats(
    x: Tensor, eps: float, stat_dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per row of ``x`` (already in the computing dtype): mean and biased variance, and the
    mean and 1/std the normalization uses -- rounded to ``stat_dtype`` when torch keeps the
    statistics there (value-only, so that derivatives still flow in the wide dtype)."""
    var, mean = torch.var_mean(x, dim=1, correction=0)
    invstd = torch.rsqrt(var + eps)
    used_mean, used_invstd = mean, invstd
    if stat_dtype != x.dtype:
        used_mean = mean + (mean.detach().to(stat_dtype).to(x.dtype) - mean.detach())
        used_invstd = invstd + (invstd.detach().to(stat_dtype).to(x.dtype) - invstd.detach())
    return mean, var, used_mean, used_invstd


def _grads(
    x: Tensor, dy: Tensor, w: Tensor | None, mean: Tensor, invstd: Tensor, needs: tuple[bool, ...]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The closed-form gradients of ``y = (x - mean)·invstd·w + b`` over rows of ``x``:
    with x̂ = (x - mean)·invstd and g = dy·w,

        dx = invstd · (g - mean(g) - x̂ · mean(g·x̂)),   dw = Σ dy·x̂,   db = Σ dy

    (dw, db per row; the caller sums the rows of a channel)."""
    count = x.size(1)
    centered = x - mean.unsqueeze(1)
    sum_dy = dy.sum(1)
    # one batched dot product per row (no product tensor): Σ (x - mean)·dy
    dot = torch.einsum("rs,rs->r", centered, dy)
    dx = None
    if needs[0]:
        scale = invstd if w is None else invstd * w
        k = dot * invstd * invstd / count
        # (dy - mean(dy) - (x - mean)·k)·scale as two fused multiply-adds
        dx = torch.addcmul(
            (-scale * sum_dy / count).unsqueeze(1), centered, (-k * scale).unsqueeze(1)
        )
        dx = dx.addcmul_(dy, scale.unsqueeze(1))
    dw = dot * invstd if needs[1] else None
    return dx, dw, sum_dy if needs[2] else None


class _InstanceNorm(torch.autograd.Function):
    """Training-mode normalization of the rows (one per sample and channel) of a contiguous
    ``(N·C, S)`` input by their own statistics, with the per-row ``weight``/``bias`` (the
    channel's, repeated N times). Forward is one statistics pass and one fused
    multiply-add (``x·(invstd·w) + (b - mean·invstd·w)``, torch's arrangement); backward is
    the closed form, or, when a graph of it is asked for (double backward), the same
    formula on statistics recomputed with autograd watching. Also returns the rows' mean
    and biased variance, for the running statistics (not differentiable)."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, w: Tensor | None, b: Tensor | None, eps: float, stat_dtype: Any
    ) -> tuple[Tensor, Tensor, Tensor]:
        xa = x.to(_acc(x.dtype))
        mean, var, used_mean, invstd = _row_stats(xa, eps, stat_dtype)
        scale = invstd if w is None else invstd * w.to(xa.dtype)
        shift = -used_mean * scale
        if b is not None:
            shift = shift + b.to(xa.dtype)
        out = to_dtype(torch.addcmul(shift.unsqueeze(1), xa, scale.unsqueeze(1)), x.dtype)
        ctx.save_for_backward(x, w, b, used_mean, invstd)
        ctx.eps, ctx.stat_dtype = eps, stat_dtype
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(
        ctx: Any, dy: Tensor, _mean: Tensor | None, _var: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        ac = _autocast.active(dy)  # a backward under autocast computes as written too
        if ac is None:
            return _InstanceNorm._backward(ctx, dy)
        with _autocast.off(ac):
            return _InstanceNorm._backward(ctx, dy)

    @staticmethod
    def _backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, w, b, mean, invstd = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:3])
        xa = x.to(_acc(x.dtype))
        if torch.is_grad_enabled():  # a graph of the gradients: let autograd see the stats
            _, _, mean, invstd = _row_stats(xa, ctx.eps, ctx.stat_dtype)
        wa = None if w is None else w.to(xa.dtype)
        dx, dw, db = _grads(xa, dy.to(xa.dtype), wa, mean, invstd, needs)
        return (
            None if dx is None else dx.to(x.dtype),
            None if dw is None or w is None else dw.to(w.dtype),
            None if db is None or b is None else db.to(b.dtype),
            None,
            None,
        )
