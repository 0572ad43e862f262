"""Layer, RMS and group normalization as compositions of elementary tensor ops.

The fast path (:mod:`._normalize`) is one autograd Function with a closed-form backward.
Three callers need the same math written so that autograd (and every ``torch.func``
transform) can follow it instead, and these functions are that one form:

* ``torch.func`` transforms, forward-mode AD and ``torch.compile`` (the eager dispatchers
  route there, as the losses do);
* double backward: the Function's backward differentiates these under ``create_graph``;
* TorchScript: the modules' ``forward`` calls them under ``torch.jit.is_scripting()``
  (hence typing's ``List``/``Optional`` and no PEP 604 annotations in this file).

16-bit inputs are normalized in float32 and rounded once at the end, as torch's CPU
kernels and its RMS composite do. Arguments are assumed checked (the eager functions
check them, in torch's order, before they get here).
"""

from typing import List, Optional  # noqa: UP035  (TorchScript's forms)

import torch
from torch import Tensor

OptTensor = Optional[Tensor]  # noqa: UP045


def opmath(dtype: torch.dtype) -> torch.dtype:
    """The dtype the arithmetic runs in: float32 for the 16-bit floats (complex32: complex64)."""
    if dtype == torch.float16 or dtype == torch.bfloat16:
        return torch.float32
    if dtype == torch.complex32:
        return torch.complex64
    return dtype


def rms_eps(dtype: torch.dtype, eps: Optional[float]) -> float:  # noqa: UP045
    """``eps``, or the machine epsilon of the (real part of the) computing dtype."""
    if eps is not None:
        return eps
    acc = opmath(dtype)
    # the machine epsilons of float64 and float32 (written out: TorchScript reads no globals)
    if acc == torch.float64 or acc == torch.complex128:
        return 2.220446049250313e-16
    return 1.1920928955078125e-07


def _last_dims(ndim: int, count: int) -> List[int]:  # noqa: UP006
    return list(range(ndim - count, ndim))


def keep_channels_last(out: Tensor, input: Tensor, keep_format: bool = True) -> Tensor:
    """``out`` in ``input``'s channels-last memory format when it has one (as torch's group
    norm and RMS norm give it), else contiguous. ``keep_format`` False (under vmap, which
    cannot be asked about memory formats): contiguous."""
    out = out.contiguous()
    if not keep_format:
        return out
    if input.is_contiguous():
        return out
    if input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last):
        return out.contiguous(memory_format=torch.channels_last)
    if input.dim() == 5 and input.is_contiguous(memory_format=torch.channels_last_3d):
        return out.contiguous(memory_format=torch.channels_last_3d)
    return out


def layer_norm(
    input: Tensor,
    normalized_shape: List[int],  # noqa: UP006
    weight: OptTensor,
    bias: OptTensor,
    eps: float,
) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last ``len(normalized_shape)``
    dimensions (biased variance)."""
    acc = opmath(input.dtype)
    x = input.to(acc)
    y = x
    if input.numel() > 0:  # (an empty reduction would warn, and there is nothing to do)
        dims = _last_dims(input.dim(), len(normalized_shape))
        var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.to(acc)
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(input.dtype).contiguous()  # torch's layer norm: always contiguous


def rms_norm(
    input: Tensor,
    normalized_shape: List[int],  # noqa: UP006
    weight: OptTensor,
    eps: Optional[float],  # noqa: UP045
    keep_format: bool = True,
) -> Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last ``len(normalized_shape)``
    dimensions; the product with ``weight`` in the promoted dtype, then the input's.
    ``keep_format``: as :func:`keep_channels_last`."""
    x = input.to(opmath(input.dtype))
    y = x
    if input.numel() > 0:
        dims = _last_dims(input.dim(), len(normalized_shape))
        y = x * torch.rsqrt((x * x).mean(dims, keepdim=True) + rms_eps(input.dtype, eps))
    if weight is not None:
        y = y * weight
    return keep_channels_last(y.to(input.dtype), input, keep_format)


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: OptTensor,
    bias: OptTensor,
    eps: float,
    keep_format: bool = True,
) -> Tensor:
    """Each sample's channels in ``num_groups`` groups, each group normalized over its
    channels and positions (biased variance), then a per-channel ``weight`` and ``bias``.
    ``keep_format``: as :func:`keep_channels_last`."""
    acc = opmath(input.dtype)
    x = input.to(acc)
    y = x
    if input.numel() > 0:
        grouped = x.reshape([input.shape[0], num_groups, -1])
        var, mean = torch.var_mean(grouped, [2], correction=0, keepdim=True)
        y = ((grouped - mean) * torch.rsqrt(var + eps)).reshape(input.shape)
    shape = [1, input.shape[1]] + [1] * (input.dim() - 2)
    if weight is not None:
        y = y * weight.to(acc).reshape(shape)
    if bias is not None:
        y = y + bias.to(acc).reshape(shape)
    return keep_channels_last(y.to(input.dtype), input, keep_format)
