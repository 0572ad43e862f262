"""The exponential weighted average of a series (the seed's smoothing recurrence).

``S_1 = Y_1`` and ``S_t = β · S_{t−1} + (1 − β) · Y_t`` for ``t ≥ 2``: each ``S_t`` is a
weighted mean of ``Y_1..Y_t`` with weights decaying by ``β`` per step into the past
(roughly the last ``1 / (1 − β)`` values count). It is the recurrence behind momentum, Adam's
moment estimates and weight EMA (:func:`reimpl.optim.swa_utils.get_ema_avg_fn` with
``decay = β``, whose first update copies, gives exactly these ``S_t``).

Bias correction (as in Adam) starts instead from ``S_0 = 0``, so the raw ``S_t`` are pulled
towards 0 early on, and divides that out: ``Ŝ_t = S_t / (1 − β^t)``. The two starts agree
on the first value (``Ŝ_1 = Y_1``) and on a constant series (both give the constant), and
differ after: the corrected average weights early values less than the seeded one does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["exponential_weighted_average"]


def exponential_weighted_average(
    series: Tensor | Sequence[float], beta: float, *, bias_correction: bool = False
) -> Tensor:
    """``S_t`` for every ``t`` of a 1-D ``series`` (see the module docstring).

    Args:
        series: a 1-D tensor (a floating dtype is kept; others become float64), or a
            sequence of numbers (float64).
        beta: the decay ``β``, in ``[0, 1]`` (``[0, 1)`` with bias correction; ``β = 0``
            returns the series, ``β = 1`` holds ``Y_1``).
        bias_correction: start from ``S_0 = 0`` and return ``S_t / (1 − β^t)``.

    Returns:
        a tensor shaped like ``series``. Computed step by step in the output dtype with
        the operations in the order written, so it equals a plain Python loop bit for bit.
    """
    y = series if isinstance(series, Tensor) else torch.tensor(series, dtype=torch.float64)
    if y.dim() != 1:
        raise ValueError(f"series must be 1-D, got shape {tuple(y.shape)}")
    if not y.is_floating_point():
        y = y.to(torch.float64)
    if not (0.0 <= beta < 1.0 if bias_correction else 0.0 <= beta <= 1.0):
        bound = "[0, 1)" if bias_correction else "[0, 1]"
        raise ValueError(f"beta must lie in {bound}, got {beta}")
    out = torch.empty_like(y)
    if y.numel() == 0:
        return out
    s = torch.zeros((), dtype=y.dtype, device=y.device)
    for t in range(y.numel()):
        if t == 0 and not bias_correction:
            s = y[0].clone()
        else:
            s = beta * s + (1 - beta) * y[t]
        out[t] = s / (1 - beta ** (t + 1)) if bias_correction else s
    return out
