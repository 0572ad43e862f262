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

import torch
from torch import Tensor

from reimpl.nn.functional import _autocast
from reimpl.nn.functional._batchnorm import normalize_channels

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
    # torch repeats the running statistics in the parameters' dtype, updates the copies
    # there, and averages them there before storing the result in the statistics' own
    work = [
        None if t is None else t.to(stat_dtype).reshape(-1).repeat(n)
        for t in (running_mean, running_var)
    ]
    w, b = (None if t is None else t.reshape(-1).repeat(n) for t in (weight, bias))
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
