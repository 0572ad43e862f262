"""Batch normalization whose statistics span a process group (the engine of SyncBatchNorm).

Forward, per channel: every rank computes its local element count ``n_r``, mean ``m_r``
and sum of squared deviations ``M2_r``; one ``all_gather`` brings all of them to every
rank, which combines them as in the parallel variance algorithm::

    N = Σ n_r        mean = Σ n_r·m_r / N        M2 = Σ (M2_r + n_r·(m_r − mean)²)

so ranks with different batch sizes (including an empty one) weigh correctly. The input is
normalized with the biased variance ``M2/N``; ``running_var`` receives the unbiased
``M2/(N−1)`` (global ``N``).

Backward, per channel, with ``x̂ = (x − mean)·invstd``: ``grad_weight = Σ_local dy·x̂`` and
``grad_bias = Σ_local dy`` stay local (DistributedDataParallel averages parameter
gradients itself); the input gradient needs the *global* sums, so ``Σ dy`` and
``Σ dy·(x − mean)`` are ``all_reduce``-d (one collective) and::

    grad_input = weight·invstd·(dy − Σdy/N − x̂·invstd·Σdy(x − mean)/N)

Every rank must take part in both collectives, so an empty local batch still sends zeros.
16-bit inputs are computed in float32.

The local part runs on batch norm's C kernels (:mod:`reimpl.kernels.cpu_batch_norm`)
where they take the input (float32/float64 CPU tensors, as plain batch norm's Function):
a statistics-only training pass gives ``m_r`` and ``M2_r``; the output is the kernels'
evaluation pass with the global mean and variance as its fixed statistics; backward takes
the local sums from one kernel pass and forms the input gradient in another from the
reduced ones. Elsewhere (CUDA, 16-bit, an empty local batch) it is elementary tensor
ops; either way the collectives are the same, so ranks may differ in which they take.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from reimpl.kernels import cpu_batch_norm
from reimpl.kernels.cpu_batch_norm import Layout
from reimpl.nn.functional._batchnorm_function import _in_format
from reimpl.nn.functional._common import to_dtype

_HALVES = (torch.float16, torch.bfloat16)


def _acc_dtype(input: Tensor) -> torch.dtype:
    return torch.float32 if input.dtype in _HALVES else input.dtype


def _output_format(input: Tensor) -> torch.memory_format:
    if input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if input.dim() == 5 and input.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def _reduce_dims(input: Tensor) -> list[int]:
    return [0, *range(2, input.dim())]


def _bshape(input: Tensor) -> tuple[int, ...]:
    return (1, input.size(1)) + (1,) * (input.dim() - 2)


def _kernel_layout(input: Tensor, weight: Tensor | None, bias: Tensor | None) -> Layout | None:
    """How the C kernels read ``input`` (a contiguous copy where they cannot read it as it
    is), or None where they do not take it."""
    if not cpu_batch_norm.usable(input, weight, bias):
        return None
    return cpu_batch_norm.read_layout(input)


def global_stats(x: Tensor, process_group: Any, world_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, M2 (sum of squared deviations) per channel and the total count ``N`` (0-d),
    over the concatenation of every rank's ``x`` (already in the accumulation dtype)."""
    channels = x.size(1)
    count = x.numel() // channels if channels else 0
    if count > 0:
        var, mean = torch.var_mean(x, dim=_reduce_dims(x), correction=0)
        m2 = var * count
    else:
        mean = x.new_zeros(channels)
        m2 = x.new_zeros(channels)
    return combine(mean, m2, count, process_group, world_size)


def combine(
    mean: Tensor, m2: Tensor, count: int, process_group: Any, world_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`global_stats` from this rank's ``mean`` and ``m2`` over ``count`` elements
    per channel: one ``all_gather``, then the parallel-variance combination."""
    channels = mean.numel()
    local = torch.cat([mean, m2, mean.new_full((1,), float(count))])
    # all_gather rather than all_reduce: the combination below is not a plain sum.
    gathered = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(gathered, local, group=process_group)
    table = torch.stack(gathered)  # (world, 2C + 1)
    means, m2s, counts = table[:, :channels], table[:, channels : 2 * channels], table[:, -1:]
    total = counts.sum()
    safe_total = torch.clamp(total, min=1.0)
    g_mean = (counts * means).sum(0) / safe_total
    g_m2 = (m2s + counts * (means - g_mean) ** 2).sum(0)
    return g_mean, g_m2, total


class SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm with statistics and input-gradient sums reduced over a group."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        eps: float,
        momentum: float,
        process_group: Any,
        world_size: int,
    ) -> Tensor:
        acc = _acc_dtype(input)
        at = _kernel_layout(input, weight, bias)
        if at is not None:
            x = _in_format(input, at)
            _, mean_r, _, m2_r = cpu_batch_norm.forward(
                x, None, None, None, None, at, True, eps, output=False
            )
            assert mean_r is not None and m2_r is not None
            mean, m2, total = combine(mean_r, m2_r, at.n * at.s, process_group, world_size)
        else:
            x = input.to(acc)
            mean, m2, total = global_stats(x, process_group, world_size)
        n = float(total.item())
        var = m2 / max(n, 1.0)
        if at is not None:  # the global statistics as the evaluation pass's fixed ones
            out, _, invstd, _ = cpu_batch_norm.forward(x, weight, bias, mean, var, at, False, eps)
            assert invstd is not None
        else:
            invstd = torch.rsqrt(var + eps)
        if running_mean is not None and running_var is not None and n > 0:
            unbiased = m2 / (n - 1.0) if n > 1 else m2 / 0.0
            with torch.no_grad():
                running_mean.copy_(momentum * mean + (1 - momentum) * running_mean.to(acc))
                running_var.copy_(momentum * unbiased + (1 - momentum) * running_var.to(acc))
        ctx.save_for_backward(input, weight, mean, invstd)  # type: ignore[arg-type]
        ctx.total = n  # type: ignore[attr-defined]
        ctx.layout = at  # type: ignore[attr-defined]
        ctx.bias_dtype = None if bias is None else bias.dtype  # type: ignore[attr-defined]
        ctx.process_group = process_group  # type: ignore[attr-defined]
        if at is not None:
            assert out is not None
            return out
        bshape = _bshape(input)
        y = (x - mean.reshape(bshape)) * invstd.reshape(bshape)
        if weight is not None:
            y = y * weight.to(acc).reshape(bshape)
        if bias is not None:
            y = y + bias.to(acc).reshape(bshape)
        y, fmt = to_dtype(y, input.dtype), _output_format(input)
        return y if y.is_contiguous(memory_format=fmt) else y.contiguous(memory_format=fmt)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, weight, mean, invstd = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        at: Layout | None = ctx.layout
        if at is not None:
            dy = _in_format(grad_output, at)
            if cpu_batch_norm.usable(dy):
                return (*_kernel_backward(ctx, input, dy, weight, mean, invstd, at), *[None] * 6)
        acc = _acc_dtype(input)
        bshape = _bshape(input)
        dims = _reduce_dims(input)
        dy = grad_output.to(acc)
        xmu = input.to(acc) - mean.reshape(bshape)
        sum_dy = dy.sum(dims)
        sum_dy_xmu = (dy * xmu).sum(dims)
        grad_input = grad_weight = grad_bias = None
        if need_input:
            channels = sum_dy.numel()
            both = torch.cat([sum_dy, sum_dy_xmu])
            dist.all_reduce(both, op=dist.ReduceOp.SUM, group=ctx.process_group)
            g_sum_dy, g_sum_dy_xmu = both[:channels], both[channels:]
            n = max(ctx.total, 1.0)
            scale = invstd if weight is None else invstd * weight.to(acc)
            inv2 = invstd * invstd
            gi = (
                dy
                - (g_sum_dy / n).reshape(bshape)
                - xmu * (inv2 * g_sum_dy_xmu / n).reshape(bshape)
            ) * scale.reshape(bshape)
            grad_input = gi.to(input.dtype).contiguous(memory_format=_output_format(input))
        if weight is not None and need_weight:
            grad_weight = (sum_dy_xmu * invstd).to(weight.dtype)
        if ctx.bias_dtype is not None and need_bias:
            grad_bias = sum_dy.to(ctx.bias_dtype)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


def _kernel_backward(
    ctx: Any,
    input: Tensor,
    dy: Tensor,
    weight: Tensor | None,
    mean: Tensor,
    invstd: Tensor,
    at: Layout,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The module docstring's backward on the C kernels: the local sums from a pass with
    a unit invstd (so its "dweight" is Σdy·(x − mean) itself), then, if the input needs a
    gradient, the reduced sums into a second pass that forms it."""
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    x = _in_format(input, at)
    _, sum_dy_xmu, sum_dy = cpu_batch_norm.backward(
        x, dy, None, mean, torch.ones_like(invstd), at, True, (False, True, True)
    )
    assert sum_dy_xmu is not None and sum_dy is not None
    grad_input = grad_weight = grad_bias = None
    if need_input:
        both = torch.cat([sum_dy, sum_dy_xmu])
        dist.all_reduce(both, op=dist.ReduceOp.SUM, group=ctx.process_group)
        grad_input, _, _ = cpu_batch_norm.backward(
            x, dy, weight, mean, invstd, at, True, (True, False, False), both, int(ctx.total)
        )
    if weight is not None and need_weight:
        grad_weight = (sum_dy_xmu * invstd).to(weight.dtype)
    if ctx.bias_dtype is not None and need_bias:
        grad_bias = sum_dy.to(ctx.bias_dtype)
    return grad_input, grad_weight, grad_bias
