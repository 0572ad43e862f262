"""How a loss turns per-element values into what the caller asked for.

Shared by every loss so the legacy ``size_average``/``reduce`` mapping and the
error for an unknown reduction live in one place.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from reimpl.nn.functional import _autocast

REDUCTIONS = ("none", "mean", "sum")


def legacy_reduction(size_average: bool | None, reduce: bool | None, *, warn: bool = True) -> str:
    """Map the deprecated ``size_average``/``reduce`` flags to a reduction string.

    Either flag left as ``None`` counts as ``True`` (torch's rule): both true -> ``mean``,
    ``reduce`` alone -> ``sum``, ``reduce=False`` -> ``none``.
    """
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    reduction = ("mean" if size_average else "sum") if reduce else "none"
    if warn:
        warnings.warn(
            f"size_average and reduce are deprecated; pass reduction='{reduction}' instead.",
            UserWarning,
            stacklevel=3,
        )
    return reduction


def resolve(reduction: str, size_average: bool | None = None, reduce: bool | None = None) -> str:
    """The reduction in force: the legacy flags win when given, then ``reduction`` is checked."""
    if size_average is not None or reduce is not None:
        return legacy_reduction(size_average, reduce)
    check(reduction)
    return reduction


def resolve_enum(
    reduction: str, size_average: bool | None = None, reduce: bool | None = None
) -> str:
    """:func:`resolve` for the losses whose torch form maps ``reduction`` to ATen's enum: those
    also take the deprecated spelling ``'elementwise_mean'`` for ``'mean'`` (with a warning)."""
    if size_average is None and reduce is None and reduction == "elementwise_mean":
        warnings.warn(
            "reduction='elementwise_mean' is deprecated; pass reduction='mean' instead.",
            UserWarning,
            stacklevel=3,
        )
        return "mean"
    return resolve(reduction, size_average, reduce)


def check(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"{reduction} is not a valid value for reduction; expected one of 'none', 'mean', 'sum'"
        )


def apply(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def weighted(
    loss: Tensor,
    weight: Tensor,
    reduction: str,
    *,
    mean_by_weight: bool,
    autocast: str | None = None,
) -> Tensor:
    """Per-element ``weight`` (same size as the input) for the regression losses.

    ``mean_by_weight``: the weighted mean divides by ``weight.sum()`` (MSE, L1) rather than
    by the element count (Huber) -- torch differs between them and we follow it.
    ``autocast``: the device type whose autocast torch's elementwise code would run under;
    on CUDA its sums accumulate in float32 (see :mod:`._autocast`).
    """
    loss = loss * weight
    if reduction == "none":
        return loss
    if reduction == "sum":
        return torch.sum(loss, dtype=_autocast.sum_dtype(autocast, loss))
    if reduction == "mean":
        if not mean_by_weight:
            return loss.mean()
        total = torch.sum(loss, dtype=_autocast.sum_dtype(autocast, loss))
        return total / torch.sum(weight, dtype=_autocast.sum_dtype(autocast, weight))
    raise ValueError(f"Invalid reduction mode: {reduction}. Expected one of 'none', 'mean', 'sum'.")
