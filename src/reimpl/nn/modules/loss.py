"""Loss modules: thin wrappers over :mod:`reimpl.nn.functional`.

Each subclasses the ``torch.nn`` loss it replaces (``isinstance(m, torch.nn.MSELoss)``
holds), for identity only: every method torch's classes define is defined here again, so
no torch loss code runs. Constructor signatures, defaults, attribute and buffer names are
torch's, so a ``state_dict`` (class ``weight``, ``pos_weight``) moves between torch and
reimpl.
"""

from typing import Optional

import torch
from torch import Tensor

from reimpl._compat import torch_at_least
from reimpl.nn import functional as F
from reimpl.nn.functional import _reduction
from reimpl.nn.functional import _scripted as S


class _Loss(torch.nn.Module):
    """What torch's ``_Loss`` sets up: ``reduction`` (from the legacy flags when given)."""

    reduction: str

    def __init__(
        self, size_average: bool | None = None, reduce: bool | None = None, reduction: str = "mean"
    ) -> None:
        # nn.Module's own set-up only: torch's loss classes sit after this one in the MRO
        torch.nn.Module.__init__(self)
        if size_average is not None or reduce is not None:
            reduction = _reduction.legacy_reduction(size_average, reduce)
        self.reduction = reduction


class _WeightedLoss(_Loss):
    # TorchScript reads these annotations and parses typing's forms, not PEP 604 unions
    weight: Optional[Tensor]  # noqa: UP045

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
    ) -> None:
        _Loss.__init__(self, size_average, reduce, reduction)
        self.register_buffer("weight", weight)


class L1Loss(_Loss, torch.nn.L1Loss):
    """Mean absolute error, ``|input - target|``."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.l1_loss(input, target, self.reduction)
        return F.l1_loss(input, target, reduction=self.reduction)


class MSELoss(_Loss, torch.nn.MSELoss):
    """Mean squared error, ``(input - target)^2``."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.mse_loss(input, target, self.reduction)
        return F.mse_loss(input, target, reduction=self.reduction)


class SmoothL1Loss(_Loss, torch.nn.SmoothL1Loss):
    """Quadratic below ``beta``, linear above (``beta=0`` is L1)."""

    def __init__(
        self,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
        beta: float = 1.0,
    ) -> None:
        _Loss.__init__(self, size_average, reduce, reduction)
        self.beta = beta

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.smooth_l1_loss(input, target, self.reduction, self.beta)
        return F.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class HuberLoss(_Loss, torch.nn.HuberLoss):
    """Quadratic below ``delta``, ``delta``-sloped linear above."""

    def __init__(self, reduction: str = "mean", delta: float = 1.0) -> None:
        # torch >= 2.13 takes Python numbers only, and says so at construction
        if torch_at_least(2, 13) and not isinstance(delta, (float, int)):
            raise TypeError(
                f"HuberLoss: delta must be a Python float or int, got {type(delta).__name__}"
            )
        _Loss.__init__(self, reduction=reduction)
        self.delta = delta

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.huber_loss(input, target, self.reduction, self.delta)
        return F.huber_loss(input, target, reduction=self.reduction, delta=self.delta)


class NLLLoss(_WeightedLoss, torch.nn.NLLLoss):
    """Negative log-likelihood of log-probabilities ``input`` at class indices ``target``."""

    ignore_index: int

    def __init__(
        self, weight: Tensor | None = None, size_average: bool | None = None,
        ignore_index: int = -100, reduce: bool | None = None, reduction: str = "mean",
    ) -> None:  # fmt: skip
        _WeightedLoss.__init__(self, weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.nll_loss(input, target, self.weight, self.ignore_index, self.reduction)
        return F.nll_loss(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )


class CrossEntropyLoss(_WeightedLoss, torch.nn.CrossEntropyLoss):
    """Cross-entropy of logits against class indices or class probabilities."""

    ignore_index: int
    label_smoothing: float

    def __init__(
        self, weight: Tensor | None = None, size_average: bool | None = None,
        ignore_index: int = -100, reduce: bool | None = None, reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:  # fmt: skip
        _WeightedLoss.__init__(self, weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.cross_entropy(
                input,
                target,
                self.weight,
                self.ignore_index,
                self.reduction,
                self.label_smoothing,
            )
        return F.cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )


class BCELoss(_WeightedLoss, torch.nn.BCELoss):
    """Binary cross-entropy between probabilities."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.binary_cross_entropy(input, target, self.weight, self.reduction)
        return F.binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(_Loss, torch.nn.BCEWithLogitsLoss):
    """Sigmoid + binary cross-entropy in one stable expression; ``pos_weight`` per class."""

    # TorchScript reads these annotations and parses typing's forms, not PEP 604 unions
    weight: Optional[Tensor]  # noqa: UP045
    pos_weight: Optional[Tensor]  # noqa: UP045

    def __init__(
        self, weight: Tensor | None = None, size_average: bool | None = None,
        reduce: bool | None = None, reduction: str = "mean", pos_weight: Tensor | None = None,
    ) -> None:  # fmt: skip
        _Loss.__init__(self, size_average, reduce, reduction)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.binary_cross_entropy_with_logits(
                input, target, self.weight, self.pos_weight, self.reduction
            )
        return F.binary_cross_entropy_with_logits(
            input, target, self.weight, pos_weight=self.pos_weight, reduction=self.reduction
        )
