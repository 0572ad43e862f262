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
16-bit inputs are computed in float32. Only elementary tensor ops and
``torch.distributed`` collectives are used.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

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
    local = torch.cat([mean, m2, x.new_full((1,), float(count))])
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
        x = input.to(acc)
        mean, m2, total = global_stats(x, process_group, world_size)
        n = float(total.item())
        var = m2 / max(n, 1.0)
        invstd = torch.rsqrt(var + eps)
        if running_mean is not None and running_var is not None and n > 0:
            unbiased = m2 / (n - 1.0) if n > 1 else m2 / 0.0
            with torch.no_grad():
                running_mean.copy_(momentum * mean + (1 - momentum) * running_mean.to(acc))
                running_var.copy_(momentum * unbiased + (1 - momentum) * running_var.to(acc))
        bshape = _bshape(input)
        y = (x - mean.reshape(bshape)) * invstd.reshape(bshape)
        if weight is not None:
            y = y * weight.to(acc).reshape(bshape)
        if bias is not None:
            y = y + bias.to(acc).reshape(bshape)
        ctx.save_for_backward(input, weight, mean, invstd)  # type: ignore[arg-type]
        ctx.total = n  # type: ignore[attr-defined]
        ctx.bias_dtype = None if bias is None else bias.dtype  # type: ignore[attr-defined]
        ctx.process_group = process_group  # type: ignore[attr-defined]
        return y.to(input.dtype).contiguous(memory_format=_output_format(input))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, weight, mean, invstd = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
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
