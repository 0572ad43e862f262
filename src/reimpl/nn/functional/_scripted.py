"""TorchScript forms of the module computations, from elementary tensor ops.

``torch.jit.script`` compiles a module's ``forward`` and everything it calls, which the
eager functional code (custom autograd Functions, fast paths, autocast and ``torch.func``
dispatch, PEP 604 annotations) is not written for. Each module's ``forward`` therefore
takes, under ``torch.jit.is_scripting()`` only, the matching function here: the same
formulas as the eager code, in float arithmetic of the input's dtype, with autograd's
own gradients. Eager calls never come here, except the dropout recipe
(``masked_dropout``), which the eager dropout functions share.

The dropout functions draw exactly as the eager ones (one ``bernoulli_`` into a keep
tensor of the input's dtype), so a scripted reimpl dropout and a scripted torch dropout
give the same numbers for the same seed on CPU.
"""

import math
import warnings
from typing import List, Optional  # noqa: UP035  (TorchScript's forms)

import torch
from torch import Tensor

OptTensor = Optional[Tensor]  # noqa: UP045


# --------------------------------------------------------------------------- reductions


def reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(reduction + " is not a valid value for reduction")


# --------------------------------------------------------------------------- regression


def l1_loss(input: Tensor, target: Tensor, reduction: str) -> Tensor:
    return reduce((input - target).abs(), reduction)


def mse_loss(input: Tensor, target: Tensor, reduction: str) -> Tensor:
    d = input - target
    return reduce(d * d, reduction)


def smooth_l1_loss(input: Tensor, target: Tensor, reduction: str, beta: float) -> Tensor:
    if beta < 0:
        raise RuntimeError("smooth_l1_loss does not support negative values for beta.")
    z = (input - target).abs()
    if beta == 0.0:
        return reduce(z, reduction)
    return reduce(torch.where(z < beta, 0.5 * z * z / beta, z - 0.5 * beta), reduction)


def huber_loss(input: Tensor, target: Tensor, reduction: str, delta: float) -> Tensor:
    if delta <= 0:
        raise RuntimeError("huber_loss does not support non-positive values for delta.")
    z = (input - target).abs()
    return reduce(torch.where(z < delta, 0.5 * z * z, delta * (z - 0.5 * delta)), reduction)


# --------------------------------------------------------------------------- binary


def binary_cross_entropy(
    input: Tensor, target: Tensor, weight: OptTensor, reduction: str
) -> Tensor:
    if target.size() != input.size():
        raise ValueError("Using a target size that is different to the input size is deprecated.")
    # logs clamped at -100, as torch's (a 0 or 1 input gives a finite loss)
    log_x = torch.log(input).clamp_min(-100.0)
    loss = (target - 1) * torch.log1p(-input).clamp_min(-100.0) - target * log_x
    if weight is not None:
        loss = loss * weight
    return reduce(loss, reduction)


def binary_cross_entropy_with_logits(
    input: Tensor, target: Tensor, weight: OptTensor, pos_weight: OptTensor, reduction: str
) -> Tensor:
    if target.size() != input.size():
        raise ValueError("Target size must be the same as input size")
    log_sig = torch.clamp_max(input, 0) - torch.log1p(torch.exp(-torch.abs(input)))
    if pos_weight is not None:
        log_sig = ((pos_weight - 1) * target + 1) * log_sig
    loss = (1 - target) * input - log_sig
    if weight is not None:
        loss = loss * weight
    return reduce(loss, reduction)


# --------------------------------------------------------------------------- classification


def log_softmax(input: Tensor, dim: int) -> Tensor:
    if input.numel() == 0:
        return input.clone()
    shifted = input - input.amax(dim, keepdim=True)
    return shifted - shifted.exp().sum(dim, keepdim=True).log()


def _class_shape(input: Tensor, n: int) -> List[int]:  # noqa: UP006
    shape = [1] * input.dim()
    shape[1 if input.dim() > 1 else 0] = n
    return shape


def nll_loss(
    input: Tensor, target: Tensor, weight: OptTensor, ignore_index: int, reduction: str
) -> Tensor:
    if input.dim() < 1:
        raise ValueError("Expected 1 or more dimensions (got 0)")
    class_dim = 1 if input.dim() > 1 else 0
    if input.dim() > 1 and target.dim() > 0 and input.size(0) != target.size(0):
        raise ValueError("Expected input batch_size to match target batch_size.")
    n_classes = input.size(class_dim)
    ignored = target == ignore_index
    safe = target.masked_fill(ignored, 0)
    if bool(((safe < 0) | (safe >= n_classes)).any()):
        raise IndexError("Target is out of bounds.")
    picked = -input.gather(class_dim, safe.unsqueeze(class_dim)).squeeze(class_dim)
    if weight is not None:
        w = weight[safe]
    else:
        w = torch.ones_like(picked)
    w = w.masked_fill(ignored, 0)
    loss = picked * w
    if reduction == "mean":
        return loss.sum() / w.sum()
    return reduce(loss, reduction)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: OptTensor,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
) -> Tensor:
    if label_smoothing < 0.0 or label_smoothing > 1.0:
        raise ValueError("label_smoothing must be between 0.0 and 1.0")
    class_dim = 1 if input.dim() > 1 else 0
    n_classes = input.size(class_dim)
    logp = log_softmax(input, class_dim)
    if target.is_floating_point():  # class probabilities
        if target.size() != input.size():
            raise ValueError("Expected target of the same shape as input for probabilities.")
        if label_smoothing > 0.0:
            target = target * (1 - label_smoothing) + label_smoothing / n_classes
        per = logp * target
        if weight is not None:
            per = per * weight.view(_class_shape(input, n_classes))
        loss = -per.sum(class_dim)
        if reduction == "mean":
            if input.numel() == 0:
                return loss.sum() * float("nan")
            return loss.sum() / (input.numel() / n_classes)
        return reduce(loss, reduction)
    nll = nll_loss(logp, target, weight, ignore_index, reduction)
    if label_smoothing <= 0.0:
        return nll
    ignored = target == ignore_index
    if weight is not None:
        smooth = -(logp * weight.view(_class_shape(input, n_classes))).sum(class_dim)
    else:
        smooth = -logp.sum(class_dim)
    smooth = smooth.masked_fill(ignored, 0.0)
    if reduction == "mean":
        if weight is not None:
            denom = weight[target.masked_fill(ignored, 0)].masked_fill(ignored, 0).sum()
        else:
            denom = (~ignored).sum()
        ret = smooth.sum() / denom
    else:
        ret = reduce(smooth, reduction)
    return (1 - label_smoothing) * nll + ret * (label_smoothing / n_classes)


# --------------------------------------------------------------------------- dropout


def _check_p(p: float) -> None:
    if p < 0.0 or p > 1.0:
        raise ValueError("dropout probability has to be between 0 and 1, but got " + str(p))


def masked_dropout(
    input: Tensor, p: float, training: bool, inplace: bool, per_channel: bool, alpha: bool
) -> Tensor:
    """The dropout recipe of :mod:`._dropout` (which calls it eagerly too): draws, scaling
    and rounding as torch's CPU kernels."""
    _check_p(p)
    if p == 0 or not training or input.numel() == 0:
        return input
    if p == 1:
        zero = torch.zeros((), dtype=input.dtype, device=input.device)
        return input.mul_(zero) if inplace else input * zero
    if per_channel:
        if input.dim() < 2:
            raise RuntimeError(
                "channel-wise dropout needs an input of at least 2 dimensions (N, C, ...), "
                "but got a " + str(input.dim()) + "-D input"
            )
        noise_shape = [input.size(0), input.size(1)] + [1] * (input.dim() - 2)
        keep = input.new_empty(noise_shape)  # as torch: batched under vmap
    else:
        keep = torch.empty_like(input)
    keep.bernoulli_(1 - p)
    if not alpha:
        keep.div_(1 - p)
        return input.mul_(keep) if inplace else input * keep
    sat = 1.7580993408473766  # |alpha'|: SELU's lambda * alpha
    a = 1.0 / math.sqrt((sat * sat * p + 1) * (1 - p))
    shift = keep.add(-1).mul_(sat * a).add_(sat * a * p)
    keep.mul_(a)
    out = input.mul_(keep) if inplace else input * keep
    return out.add_(shift)


def channel_dropout(
    input: Tensor, p: float, training: bool, inplace: bool, batched_dim: int
) -> Tensor:
    """dropout1d / dropout2d / dropout3d (``batched_dim`` 3 / 4 / 5), as the eager ones:
    dropout1d and dropout3d take an input one rank short as unbatched (a batch dim of 1
    for the draw); dropout2d and dropout3d warn on other ranks (deprecated), and
    dropout2d reads a 3-D input as ``(N, C, L)``."""
    ndim = input.dim()
    name = "dropout" + str(batched_dim - 2) + "d"
    if batched_dim == 3 and ndim not in [2, 3]:
        raise RuntimeError("dropout1d: needs a 2-D (C, L) or 3-D (N, C, L) input")
    if batched_dim > 3 and ndim not in [batched_dim - 1, batched_dim]:
        warnings.warn(
            name + ": a " + str(ndim) + "-D input is deprecated and will be an error in a "
            "future release; "
            + name
            + " drops whole channels of "
            + str(batched_dim - 1)
            + "-D or "
            + str(batched_dim)
            + "-D inputs. Use dropout for others.",
            stacklevel=2,
        )
    if batched_dim == 4:
        if ndim == 3:
            warnings.warn(
                "dropout2d: a 3-D input is taken as (N, C, L) and gets channel-wise 1-D "
                "dropout (as torch does today). Use dropout1d for (N, C, L) inputs.",
                stacklevel=2,
            )
        return masked_dropout(input, p, training, inplace, True, False)
    if ndim == batched_dim:
        return masked_dropout(input, p, training, inplace, True, False)
    x = input.unsqueeze_(0) if inplace else input.unsqueeze(0)
    out = masked_dropout(x, p, training, inplace, True, False)
    return out.squeeze_(0) if inplace else out.squeeze(0)


# --------------------------------------------------------------------------- batch norm


def batch_norm(
    input: Tensor,
    running_mean: OptTensor,
    running_var: OptTensor,
    weight: OptTensor,
    bias: OptTensor,
    training: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """Batch statistics (and running-stat update) when ``training``, else running ones."""
    if input.dim() < 2:
        raise ValueError("batch_norm: expected an (N, C, *) input")
    dims = [0] + list(range(2, input.dim()))  # noqa: RUF005 (TorchScript)
    shape = _class_shape(input, input.size(1))
    x = input.float() if input.dtype in [torch.float16, torch.bfloat16] else input
    if training:
        count = input.numel() // max(input.size(1), 1)
        if count <= 1:
            raise ValueError("Expected more than 1 value per channel when training")
        mean = x.mean(dims)
        var = (x - mean.view(shape)).square().mean(dims)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                unbiased = var * (count / (count - 1))
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype) * momentum)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype) * momentum)
    else:
        if running_mean is None or running_var is None:
            raise RuntimeError("batch_norm: running_mean and running_var are needed in eval")
        mean = running_mean.to(x.dtype)
        var = running_var.to(x.dtype)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.to(x.dtype)
    out = (x - mean.view(shape)) * scale.view(shape)
    if bias is not None:
        out = out + bias.to(x.dtype).view(shape)
    return out.to(input.dtype)
