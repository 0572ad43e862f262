"""Margin and embedding loss modules: thin wrappers over :mod:`reimpl.nn.functional`,
subclassing torch's for identity only (see :mod:`.loss`), with torch's constructor
signatures, defaults, checks, attribute and buffer names (``weight`` of the multi-label soft
margin and multi margin losses), so a ``state_dict`` moves between torch and reimpl."""

from collections.abc import Callable

import torch
from torch import Tensor

from reimpl.nn import functional as F
from reimpl.nn.functional import _scripted_extra as S
from reimpl.nn.modules.distance import PairwiseDistance
from reimpl.nn.modules.loss import _Loss, _WeightedLoss


class _MarginLoss(_Loss):
    """``margin`` (torch's default 0 for the ranking and cosine embedding losses) and the
    reduction."""

    margin: float

    def __init__(
        self, margin: float = 0.0, size_average: bool | None = None, reduce: bool | None = None,
        reduction: str = "mean",
    ) -> None:  # fmt: skip
        _Loss.__init__(self, size_average, reduce, reduction)
        self.margin = margin


class MarginRankingLoss(_MarginLoss, torch.nn.MarginRankingLoss):
    """max(0, -y (x1 - x2) + margin)."""

    def forward(self, input1: Tensor, input2: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.margin_ranking_loss(input1, input2, target, self.margin, self.reduction)
        return F.margin_ranking_loss(
            input1, input2, target, margin=self.margin, reduction=self.reduction
        )


class HingeEmbeddingLoss(_MarginLoss, torch.nn.HingeEmbeddingLoss):
    """x where y = 1, max(0, margin - x) where y = -1."""

    def __init__(
        self, margin: float = 1.0, size_average: bool | None = None, reduce: bool | None = None,
        reduction: str = "mean",
    ) -> None:  # fmt: skip
        _MarginLoss.__init__(self, margin, size_average, reduce, reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.hinge_embedding_loss(input, target, self.margin, self.reduction)
        return F.hinge_embedding_loss(input, target, margin=self.margin, reduction=self.reduction)


class CosineEmbeddingLoss(_MarginLoss, torch.nn.CosineEmbeddingLoss):
    """1 - cos(x1, x2) where y = 1, max(0, cos(x1, x2) - margin) where y = -1."""

    def forward(self, input1: Tensor, input2: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.cosine_embedding_loss(input1, input2, target, self.margin, self.reduction)
        return F.cosine_embedding_loss(
            input1, input2, target, margin=self.margin, reduction=self.reduction
        )


class SoftMarginLoss(_Loss, torch.nn.SoftMarginLoss):
    """log(1 + exp(-y x)), y in {-1, 1}."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.soft_margin_loss(input, target, self.reduction)
        return F.soft_margin_loss(input, target, reduction=self.reduction)


class MultiLabelSoftMarginLoss(_WeightedLoss, torch.nn.MultiLabelSoftMarginLoss):
    """One logistic loss per label, averaged over the labels; ``weight`` per label."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.multilabel_soft_margin_loss(input, target, self.weight, self.reduction)
        return F.multilabel_soft_margin_loss(
            input, target, weight=self.weight, reduction=self.reduction
        )


class MultiLabelMarginLoss(_Loss, torch.nn.MultiLabelMarginLoss):
    """Hinge between every target class (listed up to the first -1) and every other class."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.multilabel_margin_loss(input, target, self.reduction)
        return F.multilabel_margin_loss(input, target, reduction=self.reduction)


class MultiMarginLoss(_WeightedLoss, torch.nn.MultiMarginLoss):
    """Multi-class hinge of power ``p`` (1 or 2) with ``margin``; ``weight`` per class."""

    p: int
    margin: float

    def __init__(
        self, p: int = 1, margin: float = 1.0, weight: Tensor | None = None,
        size_average: bool | None = None, reduce: bool | None = None, reduction: str = "mean",
    ) -> None:  # fmt: skip
        _WeightedLoss.__init__(self, weight, size_average, reduce, reduction)
        if p not in (1, 2):
            raise ValueError(f"MultiMarginLoss supports p = 1 and p = 2, got p={p}")
        if weight is not None and weight.dim() != 1:
            raise ValueError(
                f"MultiMarginLoss takes a 1-D weight (one per class) or None, got a "
                f"{weight.dim()}-D one"
            )
        self.p = p
        self.margin = margin

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.multi_margin_loss(
                input, target, self.p, self.margin, self.weight, self.reduction
            )
        return F.multi_margin_loss(
            input,
            target,
            p=self.p,
            margin=self.margin,
            weight=self.weight,
            reduction=self.reduction,
        )


def _positive_margin(cls: str, margin: float) -> None:
    if margin <= 0:
        raise ValueError(f"{cls}: the margin must be > 0, got margin={margin}")


class TripletMarginLoss(_Loss, torch.nn.TripletMarginLoss):
    """max(0, d(a, p) + margin - d(a, n)), d the p-norm distance (``swap``: Balntas et al.)."""

    margin: float
    p: float
    eps: float
    swap: bool

    def __init__(
        self, margin: float = 1.0, p: float = 2.0, eps: float = 1e-6, swap: bool = False,
        size_average: bool | None = None, reduce: bool | None = None, reduction: str = "mean",
    ) -> None:  # fmt: skip
        _Loss.__init__(self, size_average, reduce, reduction)
        _positive_margin("TripletMarginLoss", margin)
        self.margin = margin
        self.p = p
        self.eps = eps
        self.swap = swap

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return S.triplet_margin_loss(
                anchor, positive, negative, self.margin, self.p, self.eps, self.swap,
                self.reduction,
            )  # fmt: skip
        return F.triplet_margin_loss(
            anchor,
            positive,
            negative,
            margin=self.margin,
            p=self.p,
            eps=self.eps,
            swap=self.swap,
            reduction=self.reduction,
        )


class TripletMarginWithDistanceLoss(_Loss, torch.nn.TripletMarginWithDistanceLoss):
    """The triplet loss for any ``distance_function`` (default: :class:`PairwiseDistance`).
    Not scriptable (torch's is not either: it holds a Python callable)."""

    def __init__(
        self, *, distance_function: Callable[[Tensor, Tensor], Tensor] | None = None,
        margin: float = 1.0, swap: bool = False, reduction: str = "mean",
    ) -> None:  # fmt: skip
        _Loss.__init__(self, None, None, reduction)
        _positive_margin("TripletMarginWithDistanceLoss", margin)
        self.distance_function: Callable[[Tensor, Tensor], Tensor] | None = (
            distance_function if distance_function is not None else PairwiseDistance()
        )
        self.margin = margin
        self.swap = swap

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return F.triplet_margin_with_distance_loss(
            anchor,
            positive,
            negative,
            distance_function=self.distance_function,
            margin=self.margin,
            swap=self.swap,
            reduction=self.reduction,
        )
