"""Likelihood loss modules (KL divergence, Poisson and Gaussian NLL): thin wrappers over
:mod:`reimpl.nn.functional`, subclassing torch's for identity only (see :mod:`.loss`), with
torch's constructor signatures, defaults and attribute names."""

import torch
from torch import Tensor

from reimpl.nn import functional as F
from reimpl.nn.functional import _scripted_extra as S
from reimpl.nn.modules.loss import _Loss


class KLDivLoss(_Loss, torch.nn.KLDivLoss):
    """KL divergence of ``target`` from the distribution whose log-probabilities are ``input``."""

    log_target: bool

    def __init__(
        self, size_average: bool | None = None, reduce: bool | None = None,
        reduction: str = "mean", log_target: bool = False,
    ) -> None:  # fmt: skip
        _Loss.__init__(self, size_average, reduce, reduction)
        self.log_target = log_target

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.kl_div(input, target, self.reduction, self.log_target)
        return F.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


class PoissonNLLLoss(_Loss, torch.nn.PoissonNLLLoss):
    """Negative log-likelihood of counts ``target`` under Poisson(rate from ``log_input``)."""

    log_input: bool
    full: bool
    eps: float

    def __init__(
        self, log_input: bool = True, full: bool = False, size_average: bool | None = None,
        eps: float = 1e-8, reduce: bool | None = None, reduction: str = "mean",
    ) -> None:  # fmt: skip
        _Loss.__init__(self, size_average, reduce, reduction)
        self.log_input = log_input
        self.full = full
        self.eps = eps

    def forward(self, log_input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.poisson_nll_loss(
                log_input, target, self.log_input, self.full, self.eps, self.reduction
            )
        return F.poisson_nll_loss(
            log_input,
            target,
            log_input=self.log_input,
            full=self.full,
            eps=self.eps,
            reduction=self.reduction,
        )


class GaussianNLLLoss(_Loss, torch.nn.GaussianNLLLoss):
    """Negative log-likelihood of ``target`` under N(``input``, ``var``). Not scriptable
    (torch's is not either)."""

    full: bool
    eps: float

    def __init__(self, *, full: bool = False, eps: float = 1e-6, reduction: str = "mean") -> None:
        _Loss.__init__(self, None, None, reduction)
        self.full = full
        self.eps = eps

    def forward(self, input: Tensor, target: Tensor, var: Tensor | float) -> Tensor:
        return F.gaussian_nll_loss(
            input, target, var, full=self.full, eps=self.eps, reduction=self.reduction
        )
