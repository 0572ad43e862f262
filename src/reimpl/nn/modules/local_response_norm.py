"""LocalResponseNorm: torch's constructor, attributes and repr, over
:func:`reimpl.nn.functional.local_response_norm` (and its TorchScript-compatible core
when scripted). It subclasses ``torch.nn.LocalResponseNorm``, so ``isinstance`` checks hold;
no torch code computes.
"""

import torch
from torch import Tensor

from reimpl.nn import functional as F
from reimpl.nn.functional._local_response_norm import lrn


class LocalResponseNorm(torch.nn.LocalResponseNorm):
    """Divides each activation of an ``(N, C, *)`` input by
    ``(k + alpha · mean of the squares over `size` neighbouring channels) ** beta``."""

    size: int
    alpha: float
    beta: float
    k: float

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        # nn.Module's own set-up only: torch's class sits after this one in the MRO
        torch.nn.Module.__init__(self)
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            if input.dim() < 3:
                raise ValueError("local_response_norm expects an input of 3 or more dimensions")
            if input.numel() == 0:
                return input
            return lrn(input, self.size, self.alpha, self.beta, self.k, False, False)
        return F.local_response_norm(input, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
