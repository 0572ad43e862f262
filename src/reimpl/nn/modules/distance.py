"""Distance modules: thin wrappers over :func:`reimpl.nn.functional.pairwise_distance` and
:func:`~reimpl.nn.functional.cosine_similarity`, subclassing torch's (identity only: every
method torch's classes define is defined here again). Attribute names are torch's
(``norm`` holds ``p``), so scripted code and ``repr`` read the same."""

import torch
from torch import Tensor

from reimpl.nn import functional as F
from reimpl.nn.functional import _scripted_extra as S


class PairwiseDistance(torch.nn.PairwiseDistance):
    """||x1 - x2 + eps||_p over the last dimension."""

    norm: float
    eps: float
    keepdim: bool

    def __init__(self, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False) -> None:
        torch.nn.Module.__init__(self)
        self.norm = p
        self.eps = eps
        self.keepdim = keepdim

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.pairwise_distance(x1, x2, self.norm, self.eps, self.keepdim)
        return F.pairwise_distance(x1, x2, self.norm, self.eps, self.keepdim)


class CosineSimilarity(torch.nn.CosineSimilarity):
    """Cosine of the angle between x1 and x2 along ``dim`` (norms floored at ``eps``)."""

    dim: int
    eps: float

    def __init__(self, dim: int = 1, eps: float = 1e-8) -> None:
        torch.nn.Module.__init__(self)
        self.dim = dim
        self.eps = eps

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.cosine_similarity(x1, x2, self.dim, self.eps)
        return F.cosine_similarity(x1, x2, self.dim, self.eps)
