"""Distances between vectors: the p-norm distance and the cosine similarity.

Both are compositions of elementary ops in torch (a vector norm, differences, products, a
sum). They are written here as the same ops in the same order, so values -- and gradients,
autograd's through the same ops -- are torch's, for every dtype, under every ``torch.func``
transform and forward-mode AD. They are also what the triplet losses measure with.

Under ``torch.autocast`` (see :mod:`._autocast`): on CPU neither is listed, so both run on
their arguments as they are; on CUDA the norm inside ``pairwise_distance`` is float32 (the
difference is still formed in the inputs' dtype) and ``cosine_similarity`` is fp32 as a whole.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reimpl.nn.functional import _autocast
from reimpl.nn.functional._regression import _kind


def pairwise_distance(
    x1: Tensor, x2: Tensor, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False
) -> Tensor:
    """d(x1, x2) = ||x1 - x2 + eps||_p over the last dimension (of the wider input).

    ``eps`` is added to every component of the difference, not to the norm: two equal
    vectors are ``eps * n^(1/p)`` apart, and the gradient of the 2-norm stays finite there.
    """
    return _autocast.run(x1, _pairwise_distance, x1, x2, p, eps, keepdim)


def _pairwise_distance(
    x1: Tensor, x2: Tensor, p: float, eps: float, keepdim: bool, ac: str | None
) -> Tensor:
    # the inputs broadcast, so the vectors lie along the last dimension of the wider one
    dim = max(x1.dim(), x2.dim()) - 1
    diff = x1 - x2 + eps
    if ac == "cuda":  # CUDA autocast runs the norm in float32
        diff = _autocast.fp32(ac, diff)
    return torch.linalg.vector_norm(diff, p, dim, keepdim)


def _result_type(a: Tensor, b: Tensor) -> torch.dtype:
    """``torch.result_type`` of two tensors, in a form ``torch.compile`` traces: a 0-D
    tensor only decides the dtype where it is of a higher kind than the other one."""
    if (a.dim() == 0) == (b.dim() == 0):
        return torch.promote_types(a.dtype, b.dtype)
    sized, zero_d = (a, b) if b.dim() == 0 else (b, a)
    if _kind(zero_d.dtype) > _kind(sized.dtype):
        return torch.promote_types(sized.dtype, zero_d.dtype)
    return sized.dtype


def cosine_similarity(x1: Tensor, x2: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """cos(x1, x2) = <x1 / max(||x1||, eps), x2 / max(||x2||, eps)> along ``dim``.

    Each vector is divided by its (floored) norm before the product, so neither the dot
    product nor the product of the norms is ever formed: no overflow for large vectors, and
    the result stays within [-1, 1]. The floor is applied outside autograd, so the gradient
    of a norm below ``eps`` is still the norm's own.
    """
    return _autocast.run(x1, _cosine_similarity, x1, x2, dim, eps)


def _cosine_similarity(x1: Tensor, x2: Tensor, dim: int, eps: float, ac: str | None) -> Tensor:
    if ac == "cuda":  # fp32 policy on CUDA
        x1, x2 = _autocast.fp32(ac, x1), _autocast.fp32(ac, x2)
    common = _result_type(x1, x2)
    if not common.is_floating_point:
        raise RuntimeError(
            f"cosine_similarity needs a floating point result, but inputs of {x1.dtype} and "
            f"{x2.dtype} compute in {common}; pass floating point tensors"
        )
    if eps < 0:
        raise RuntimeError(f"cosine_similarity needs eps >= 0, got eps={eps}")
    # integer (and bool) inputs are taken in the common floating dtype; the norm wants floats
    if not (x1.is_floating_point() or x1.is_complex()):
        x1 = x1.to(common)
    if not (x2.is_floating_point() or x2.is_complex()):
        x2 = x2.to(common)
    # both expanded unless the shapes are equal, as torch does: an expand is a node in the
    # graph, and where it sits decides the order in which autograd sums x1's gradient terms
    if x1.shape != x2.shape:
        shape = torch.broadcast_shapes(x1.shape, x2.shape)
        x1, x2 = x1.expand(shape), x2.expand(shape)
    # clones: the floor below writes in place, and the norms' own backward reads their values
    n1 = torch.linalg.vector_norm(x1, 2, dim, keepdim=True).clone()
    n2 = torch.linalg.vector_norm(x2, 2, dim, keepdim=True).clone()
    with torch.no_grad():
        n1.clamp_min_(eps)
        n2.clamp_min_(eps)
    return ((x1 / n1) * (x2 / n2)).sum(dim)
