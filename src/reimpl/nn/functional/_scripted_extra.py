"""TorchScript forms of the likelihood, margin and distance modules' computations.

As :mod:`._scripted` does for the first losses: under ``torch.jit.is_scripting()`` a module's
``forward`` calls the function here -- the eager formulas (:mod:`._likelihood`,
:mod:`._margin`, :mod:`._multi_margin`, :mod:`._distance`) in elementary ops TorchScript
compiles, with autograd's own gradients -- instead of the eager code, whose autograd
Functions, autocast and ``torch.func`` dispatch TorchScript cannot follow. Eager calls never
come here. ``GaussianNLLLoss`` and ``TripletMarginWithDistanceLoss`` have no form here:
torch's own do not script either.
"""

import math
import warnings
from typing import Optional

import torch
from torch import Tensor

from reimpl.nn.functional._scripted import reduce

OptTensor = Optional[Tensor]  # noqa: UP045

# --------------------------------------------------------------------------- likelihood


def kl_div(input: Tensor, target: Tensor, reduction: str, log_target: bool) -> Tensor:
    if reduction == "mean":
        warnings.warn(
            "kl_div: reduction='mean' divides by the number of elements, not the batch size; "
            "reduction='batchmean' gives the KL divergence.",
            stacklevel=2,
        )
    if log_target:
        loss = torch.exp(target) * (target - input)
    else:
        loss = torch.xlogy(target, target) - target * input
    if reduction == "batchmean":
        out = loss.sum()
        return out / input.size(0) if input.dim() != 0 else out
    return reduce(loss, reduction)


def poisson_nll_loss(
    input: Tensor, target: Tensor, log_input: bool, full: bool, eps: float, reduction: str
) -> Tensor:
    if log_input:
        loss = torch.exp(input) - target * input
    else:
        loss = input - target * torch.log(input + eps)
    if full:
        stirling = target * torch.log(target) - target + 0.5 * torch.log(2 * math.pi * target)
        loss = loss + stirling.masked_fill(target <= 1, 0)
    return reduce(loss, reduction)


# --------------------------------------------------------------------------- distances


def pairwise_distance(x1: Tensor, x2: Tensor, p: float, eps: float, keepdim: bool) -> Tensor:
    dim = max(x1.dim(), x2.dim()) - 1
    return torch.linalg.vector_norm(x1 - x2 + eps, p, [dim], keepdim)


def cosine_similarity(x1: Tensor, x2: Tensor, dim: int, eps: float) -> Tensor:
    if eps < 0:
        raise RuntimeError("cosine_similarity needs eps >= 0")
    common = torch.result_type(x1, x2)
    x1, x2 = x1.to(common), x2.to(common)
    # broadcast_tensors, not broadcast_shapes: TorchScript before torch 2.13 lacks the latter
    both = torch.broadcast_tensors(x1, x2)
    x1, x2 = both[0], both[1]
    n1 = torch.linalg.vector_norm(x1, 2.0, [dim], True).clamp_min(eps)
    n2 = torch.linalg.vector_norm(x2, 2.0, [dim], True).clamp_min(eps)
    return ((x1 / n1) * (x2 / n2)).sum(dim)


# --------------------------------------------------------------------------- margins


def margin_ranking_loss(
    input1: Tensor, input2: Tensor, target: Tensor, margin: float, reduction: str
) -> Tensor:
    if input1.dim() != input2.dim() or input1.dim() != target.dim():
        raise RuntimeError("margin_ranking_loss: the three tensors need the same dimensions")
    return reduce((-target * (input1 - input2) + margin).clamp_min(0), reduction)


def hinge_embedding_loss(input: Tensor, target: Tensor, margin: float, reduction: str) -> Tensor:
    zeros = torch.zeros_like(input)
    margin_term = torch.where(target != 1, (margin - input).clamp_min(0), zeros)
    return reduce(margin_term + torch.where(target != -1, input, zeros), reduction)


def soft_margin_loss(input: Tensor, target: Tensor, reduction: str) -> Tensor:
    return reduce(torch.log1p(torch.exp(-input * target)), reduction)


def _log_sigmoid(x: Tensor) -> Tensor:
    return torch.clamp_max(x, 0) - torch.log1p(torch.exp(-torch.abs(x)))


def multilabel_soft_margin_loss(
    input: Tensor, target: Tensor, weight: OptTensor, reduction: str
) -> Tensor:
    loss = -(target * _log_sigmoid(input) + (1 - target) * _log_sigmoid(-input))
    if weight is not None:
        loss = loss * weight
    class_dim = input.dim() - 1
    return reduce(loss.sum(class_dim) / input.size(class_dim), reduction)


def _as_matrix(input: Tensor) -> Tensor:
    if input.dim() == 0:
        return input.reshape(1, 1)
    return input.reshape(1, -1) if input.dim() == 1 else input


def multi_margin_loss(
    input: Tensor, target: Tensor, p: int, margin: float, weight: OptTensor, reduction: str
) -> Tensor:
    if p != 1 and p != 2:
        raise ValueError("multi_margin_loss supports p = 1 and p = 2")
    x = _as_matrix(input)
    y = target.reshape(-1, 1)
    z = (margin - x.gather(1, y)) + x
    h = z if p == 1 else z * z
    if weight is not None:
        h = h * weight[y]
    other = torch.arange(x.size(1), device=x.device).unsqueeze(0) != y
    per = torch.where(other & (z > 0), h, torch.zeros_like(h)).sum(1) / x.size(1)
    if reduction == "none" and target.dim() == 0:
        return per.reshape([])
    return reduce(per, reduction)


def multilabel_margin_loss(input: Tensor, target: Tensor, reduction: str) -> Tensor:
    x = _as_matrix(input)
    y = target.reshape(x.shape)
    listed = (y >= 0).to(torch.int64).cumprod(1) > 0
    index = y.clamp_min(0)
    classes = torch.arange(x.size(1), device=x.device)
    is_target = ((index.unsqueeze(2) == classes) & listed.unsqueeze(2)).any(1)
    z = (1 - x.gather(1, index)).unsqueeze(2) + x.unsqueeze(1)
    active = listed.unsqueeze(2) & ~is_target.unsqueeze(1) & (z > 0)
    per = torch.where(active, z, torch.zeros_like(z)).sum([1, 2]) / x.size(1)
    if reduction == "none" and target.dim() <= 1:
        return per.reshape([])
    return reduce(per, reduction)


def cosine_embedding_loss(
    input1: Tensor, input2: Tensor, target: Tensor, margin: float, reduction: str
) -> Tensor:
    dim = target.dim()
    if dim > 1 or input1.dim() != dim + 1 or input2.dim() != dim + 1:
        raise RuntimeError("cosine_embedding_loss: a 0-D target needs 1-D inputs, a 1-D one 2-D")
    prod_sum = (input1 * input2).sum(dim)
    mag1 = (input1 * input1).sum(dim) + 9.999999960041972e-13
    mag2 = (input2 * input2).sum(dim) + 9.999999960041972e-13
    cos = prod_sum / (mag1 * mag2).sqrt()
    zeros = torch.zeros_like(cos)
    pos = torch.where(target == 1, 1 - cos, zeros)
    neg = torch.where(target == -1, (cos - margin).clamp_min(0), zeros)
    return reduce(pos + neg, reduction)


def triplet_margin_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float,
    p: float,
    eps: float,
    swap: bool,
    reduction: str,
) -> Tensor:
    if margin <= 0:
        raise ValueError("the triplet margin must be > 0")
    d_pos = pairwise_distance(anchor, positive, p, eps, False)
    d_neg = pairwise_distance(anchor, negative, p, eps, False)
    if swap:
        d_neg = torch.minimum(d_neg, pairwise_distance(positive, negative, p, eps, False))
    return reduce(torch.clamp_min(margin + d_pos - d_neg, 0), reduction)
