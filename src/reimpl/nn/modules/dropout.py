"""Dropout modules: wrappers over :mod:`reimpl.nn.functional`'s dropout family, with
torch's constructor signatures, attributes (``p``, ``inplace``) and repr.

Each subclasses the ``torch.nn`` class it replaces (``isinstance(m, torch.nn.Dropout)``
holds), for identity only: every method torch's classes define is defined here again.
As torch's, ``AlphaDropout`` and ``FeatureAlphaDropout`` keep ``inplace`` as an attribute
but never work in place.
"""

import torch
from torch import Tensor

from reimpl.nn import functional as F
from reimpl.nn.functional import _scripted as S


class _DropoutNd(torch.nn.Module):
    p: float
    inplace: bool

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        # nn.Module's own set-up only: torch's dropout classes sit after this one in the MRO
        torch.nn.Module.__init__(self)
        if p < 0 or p > 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p
        self.inplace = inplace

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class Dropout(_DropoutNd, torch.nn.Dropout):
    """Zero each element with probability ``p`` in training; survivors scaled by 1/(1-p)."""

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.masked_dropout(input, self.p, self.training, self.inplace, False, False)
        return F.dropout(input, self.p, self.training, self.inplace)


class Dropout1d(_DropoutNd, torch.nn.Dropout1d):
    """Zero whole channels of ``(N, C, L)`` / ``(C, L)`` inputs."""

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.channel_dropout(input, self.p, self.training, self.inplace, 3)
        return F.dropout1d(input, self.p, self.training, self.inplace)


class Dropout2d(_DropoutNd, torch.nn.Dropout2d):
    """Zero whole channels of ``(N, C, H, W)`` inputs (3-D inputs: see ``dropout2d``)."""

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.channel_dropout(input, self.p, self.training, self.inplace, 4)
        return F.dropout2d(input, self.p, self.training, self.inplace)


class Dropout3d(_DropoutNd, torch.nn.Dropout3d):
    """Zero whole channels of ``(N, C, D, H, W)`` / ``(C, D, H, W)`` inputs."""

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.channel_dropout(input, self.p, self.training, self.inplace, 5)
        return F.dropout3d(input, self.p, self.training, self.inplace)


class AlphaDropout(_DropoutNd, torch.nn.AlphaDropout):
    """Alpha dropout (for SELU networks): keeps zero mean and unit variance."""

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.masked_dropout(input, self.p, self.training, False, False, True)
        return F.alpha_dropout(input, self.p, self.training)  # torch ignores inplace here


class FeatureAlphaDropout(_DropoutNd, torch.nn.FeatureAlphaDropout):
    """Alpha dropout of whole channels."""

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.masked_dropout(input, self.p, self.training, False, True, True)
        return F.feature_alpha_dropout(input, self.p, self.training)  # torch ignores inplace
