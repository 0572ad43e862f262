"""Batch normalization, functional form.

Per channel (dim 1) of an ``(N, C, *)`` input: normalize by the batch's mean and *biased*
variance in training (and fold the *unbiased* variance into ``running_var``), or by the
running statistics in evaluation; then scale by ``weight`` and shift by ``bias``.

16-bit inputs are computed in float32 (as torch does on CPU) and may come with float32
``weight``/``bias``/running statistics ("mixed" dtypes); otherwise every tensor must share
the input's dtype. Float32/float64 CPU calls run on C kernels through one autograd Function with the
closed-form backward (:mod:`._batchnorm_function`); everything else (16-bit and mixed
dtypes, other devices, ``torch.func`` transforms, ``torch.compile``, subclasses) takes the
composite form below, whose gradients (and second derivatives) are autograd's and agree
with torch's closed-form backward to within the per-dtype tolerances of the parity suite.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reimpl.kernels import cpu_batch_norm
from reimpl.nn.functional import _autocast
from reimpl.nn.functional._batchnorm_function import batch_norm_kernels, plan_for
from reimpl.nn.functional._common import transformed
from reimpl.nn.functional._common import vmapped as _vmapped

_HALVES = (torch.float16, torch.bfloat16)


def _check_batch_size(input: Tensor) -> None:
    if input.dim() == 0:
        raise IndexError("batch_norm: a 0-D input has no batch dimension (expected (N, C, *))")
    per_channel = input.size(0)
    for s in input.shape[2:]:
        per_channel *= s
    if per_channel == 1:
        raise ValueError(
            "Expected more than 1 value per channel when training (batch statistics need at "
            f"least 2 values per channel), got input size {input.size()}"
        )


_PARAM_NAMES = ("running_mean", "running_var", "weight", "bias")


def _check_params(input: Tensor, params: tuple[Tensor | None, ...]) -> None:
    """torch's checks of the per-channel arguments (``_PARAM_NAMES``, in that order):
    dtypes first, then sizes."""
    if not input.is_floating_point():
        raise NotImplementedError(
            f"batch_norm is only implemented for floating-point inputs, not {input.dtype}"
        )
    named = [(k, v) for k, v in zip(_PARAM_NAMES, params, strict=True) if v is not None]
    if input.dtype in _HALVES and any(v.dtype == torch.float32 for _, v in named):
        for k, v in named:
            if v.dtype != torch.float32:
                raise RuntimeError(
                    f"batch_norm: a {input.dtype} input with float32 parameters needs all of "
                    f"weight, bias, running_mean and running_var in float32; {k} is {v.dtype}"
                )
    else:
        for k, v in named:
            if v.dtype != input.dtype:
                raise RuntimeError(
                    f"batch_norm: {k} has dtype {v.dtype} but the input is {input.dtype} "
                    "(all must share a dtype; 16-bit inputs may use float32 parameters)"
                )
    channels = input.size(1) if input.dim() > 1 else 0
    for k, v in named:
        if v.numel() != channels:
            raise RuntimeError(
                f"{k} should contain {channels} elements not {v.numel()} "
                "(one per input channel, dim 1)"
            )


def _output_format(input: Tensor) -> torch.memory_format:
    if _vmapped():  # vmap cannot query other memory formats (nor do layouts matter there)
        return torch.contiguous_format
    if input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if input.dim() == 5 and input.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalization over dim 1 of ``input`` (``(N, C)`` or ``(N, C, *)``).

    ``training=True`` normalizes with batch statistics and, when running statistics are
    given, updates them in place: ``r = (1 - momentum)·r + momentum·batch`` (the batch
    variance unbiased, ``·n/(n-1)``). ``training=False`` normalizes with the running
    statistics, which must then be given.

    Under ``torch.autocast`` the arguments are used as they are (batch norm is on neither
    the CPU nor the CUDA autocast list); the arithmetic runs with autocast off.
    """
    ac = _autocast.active(input)
    if ac is None:
        return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    with _autocast.off(ac):
        return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


def _batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    if training:
        _check_batch_size(input)
        if eps <= 0.0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    elif eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    if training and (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    if not training:
        for name, t in (("running_mean", running_mean), ("running_var", running_var)):
            if t is None:
                raise RuntimeError(f"{name} must be defined in evaluation mode")
    _check_params(input, (running_mean, running_var, weight, bias))
    if input.dim() < 2:
        raise IndexError(
            f"batch_norm: input needs a channel dimension (dim 1), got a {input.dim()}-D input"
        )

    if not training and not _grad_wanted(input, weight, bias, running_mean, running_var):
        assert running_mean is not None and running_var is not None
        if not transformed():  # (evaluation is one sweep: the shortest way to it)
            y = cpu_batch_norm.eval_forward(input, running_mean, running_var, weight, bias, eps)
            if y is not None:
                return y

    def composite(x: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
        # (for double backward: the statistics are the batch's or the running ones, and
        # the running ones are not updated again)
        rm, rv = (None, None) if training else (running_mean, running_var)
        return normalize_channels(x, rm, rv, w, b, training, momentum, eps)

    plan = plan_for(
        input, running_mean, running_var, weight, bias, training, momentum, eps, composite
    )
    if plan is not None:
        return batch_norm_kernels(input, weight, bias, plan)
    return normalize_channels(
        input, running_mean, running_var, weight, bias, training, momentum, eps
    )


def _grad_wanted(*ts: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def normalize_channels(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    stat_dtype: torch.dtype | None = None,
) -> Tensor:
    """The arithmetic of :func:`batch_norm` on arguments already checked (instance norm
    runs it on its ``(1, N·C, *)`` view, after checks of its own, as torch does).
    ``stat_dtype``: the dtype torch keeps batch statistics in (default: the first given of
    running_mean, running_var, weight, bias, else the input's)."""
    params = (running_mean, running_var, weight, bias)
    acc = torch.float32 if input.dtype in _HALVES else input.dtype
    channels = input.size(1) if input.dim() > 1 else 0
    bshape = (1, channels) + (1,) * (input.dim() - 2)
    reduce_dims = [0, *range(2, input.dim())]
    x = input.to(acc)
    if input.numel() == 0:
        mean = x.new_zeros(bshape)
        invstd = x.new_ones(bshape)
    elif training:
        var, mean = torch.var_mean(x, dim=reduce_dims, correction=0, keepdim=True)
        invstd = torch.rsqrt(var + eps)
        if running_mean is not None and running_var is not None:
            n = input.numel() // max(channels, 1)
            with torch.no_grad():
                m = mean.detach().reshape(-1)
                v = var.detach().reshape(-1) * (n / (n - 1))
                try:
                    running_mean.copy_(momentum * m + (1 - momentum) * running_mean.to(acc))
                    running_var.copy_(momentum * v + (1 - momentum) * running_var.to(acc))
                except RuntimeError as e:
                    if not _vmapped():
                        raise
                    raise RuntimeError(
                        "batch_norm under vmap: a batched input cannot update running_mean "
                        "and running_var that are not batched (they are updated in place); "
                        "pass batched running statistics or none (for modules: "
                        "torch.func.replace_all_batch_norm_modules_)"
                    ) from e
    else:
        assert running_mean is not None and running_var is not None
        mean = running_mean.to(acc).reshape(bshape)
        invstd = torch.rsqrt(running_var.to(acc).reshape(bshape) + eps)
    # torch keeps batch statistics in the parameters' dtype: a 16-bit input with 16-bit
    # parameters normalizes with mean and 1/std rounded to 16 bits (the rounding is
    # value-only here, so gradients still flow in the wide dtype and cannot overflow).
    if stat_dtype is None:
        stat_dtype = next((t.dtype for t in params if t is not None), input.dtype)
    if training and stat_dtype != acc and input.numel():
        mean = mean + (mean.detach().to(stat_dtype).to(acc) - mean.detach())
        invstd = invstd + (invstd.detach().to(stat_dtype).to(acc) - invstd.detach())
    y = (x - mean) * invstd
    if weight is not None:
        y = y * weight.to(acc).reshape(bshape)
    if bias is not None:
        y = y + bias.to(acc).reshape(bshape)
    return y.to(input.dtype).contiguous(memory_format=_output_format(input))
