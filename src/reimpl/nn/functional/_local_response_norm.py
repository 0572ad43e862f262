"""Local response normalization (Krizhevsky, Sutskever & Hinton 2012, "ImageNet
Classification with Deep Convolutional Neural Networks", sec. 3.3).

Each activation is divided by a power of the energy of its neighbours across channels,
a lateral inhibition that makes nearby feature maps compete:

    b_c = a_c / (k + alpha / n · sum_{c' in window(c)} a_{c'}^2) ^ beta

with the window the ``n = size`` channels from ``c - size//2`` to ``c + (size-1)//2``,
zero outside ``[0, C)``; torch averages over the window (the padding counted, so always
divided by ``size``) and so does this. The windowed sum adds the zero-padded squares'
``size`` shifted slices in order -- no pooling or convolution -- in float32 for 16-bit
inputs (then rounded, as a pooling kernel rounds its average), and truncated for integer
inputs (whose squares torch averages as integers).

Autocast follows torch's composite op by op (``aten/src/ATen/autocast_mode.h``, checked on
CPU): on CPU the 4-D-and-up path's average is an fp32 op (``avg_pool3d``) and the 3-D
path's is not listed (``avg_pool2d``); on CUDA ``pow`` is fp32. An fp32 step hands a
16-bit input's division a float32 denominator, so the result is float32.

The core (:func:`lrn`) is TorchScript-compatible: the module's scripted ``forward`` calls it.
"""

import operator

import torch
from torch import Tensor

from reimpl.nn.functional import _autocast


def local_response_norm(
    input: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> Tensor:
    """Local response normalization of ``input`` ``(N, C, *)``, 3 or more dims, across
    channels (see the module docstring for the formula). An empty input is returned as is."""
    if input.dim() < 3:
        raise ValueError(
            "local_response_norm expects an input of 3 or more dimensions (N, C, *), "
            f"got {input.dim()}"
        )
    if input.numel() == 0:
        return input
    size = operator.index(size)  # torch's padding takes integers only (TypeError otherwise)
    ac = _autocast.active(input)
    if ac is None:
        return lrn(input, size, alpha, beta, k, False, False)
    with _autocast.off(ac):
        return lrn(input, size, alpha, beta, k, ac == "cpu" and input.dim() > 3, ac == "cuda")


def _eligible(t: Tensor) -> bool:
    """Would an fp32 autocast step cast ``t`` (floating point, not float64)?"""
    return t.is_floating_point() and t.dtype != torch.float64


def window_mean(sq: Tensor, size: int) -> Tensor:
    """The mean over each channel's window of ``size`` channels of ``sq`` (zero-padded)."""
    if size < 1:
        raise RuntimeError(
            f"local_response_norm: size is the number of channels in each window and must "
            f"be at least 1, got {size}"
        )
    channels = sq.size(1)
    shape = list(sq.shape)
    shape[1] = size // 2
    before = sq.new_zeros(shape)
    shape[1] = (size - 1) // 2
    after = sq.new_zeros(shape)
    padded = torch.cat([before, sq, after], dim=1)
    acc = sq.dtype
    if acc == torch.float16 or acc == torch.bfloat16:
        acc = torch.float32
    elif not sq.is_floating_point():
        acc = torch.int64
    padded = padded.to(acc)
    # the window's terms in order, as a pooling kernel adds them (shifted slices: every
    # torch.func transform has rules for these, unlike for unfold's backward)
    total = padded.narrow(1, 0, channels)
    for i in range(1, size):
        total = total + padded.narrow(1, i, channels)
    if sq.is_floating_point():
        return (total / size).to(sq.dtype)
    return torch.div(total, size, rounding_mode="trunc").to(sq.dtype)


def lrn(
    input: Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    fp32_average: bool,
    fp32_power: bool,
) -> Tensor:
    """``input / (k + alpha · window_mean(input²)) ** beta``, rounding where torch rounds
    (``fp32_average`` / ``fp32_power``: autocast's fp32 policy for those two steps)."""
    sq = input * input
    if fp32_average and _eligible(sq):
        sq = sq.float()
    denom = window_mean(sq, size).mul(alpha).add(k)
    if fp32_power and _eligible(denom):
        denom = denom.float()
    return input / denom.pow(beta)
