"""Likelihood losses: KL divergence, Poisson and Gaussian negative log-likelihood.

All three are compositions of elementary ops in torch too (``xlogy``, ``exp``, ``log``,
powers, a masked fill); they are written here as the same ops in the same order, so values
and autograd's gradients -- for the target and the variance as well as the input, and the
second derivatives -- are torch's, and every ``torch.func`` transform applies.

Under ``torch.autocast`` (see :mod:`._autocast`): ``kl_div`` and ``poisson_nll_loss`` are
fp32 on CPU and CUDA; ``gaussian_nll_loss`` is torch's Python code, not listed: on CPU it
runs as it is, on CUDA its ``log`` and square are float32 (and so, by promotion, the rest).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from reimpl.nn.functional import _autocast, _reduction
from reimpl.nn.functional._common import compiling as _compiling
from reimpl.nn.functional._common import vmapped as _vmapped

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


# --------------------------------------------------------------------------- KL divergence


def kl_div(
    input: Tensor, target: Tensor, size_average: bool | None = None, reduce: bool | None = None,
    reduction: str = "mean", log_target: bool = False,
) -> Tensor:  # fmt: skip
    """D_KL(target || exp(input)) per element, ``input`` holding log-probabilities:

    l = t (log t - x)          (0 where t = 0)
    l = e^t (t - x)            with ``log_target`` (t given as a log-probability)

    ``reduction='batchmean'`` divides the sum by the batch size (``input.size(0)``), which
    is the divergence per sample; ``'mean'`` divides by the element count (and warns).
    """
    if size_average is not None or reduce is not None:
        terms_reduction = _reduction.legacy_reduction(size_average, reduce)
    else:
        if reduction == "mean":
            warnings.warn(
                "kl_div: reduction='mean' divides the summed divergence by the number of "
                "elements (batch size times support size), which is not the KL divergence; "
                "reduction='batchmean' divides by the batch size only and is. 'mean' is to "
                "change to mean that in a future major release.",
                UserWarning,
                stacklevel=2,
            )
        terms_reduction = "sum" if reduction == "batchmean" else reduction
        terms_reduction = _reduction.resolve_enum(terms_reduction)
    reduced = _autocast.run_fp32(input, _kl_div, input, target, terms_reduction, log_target)
    # torch looks at the reduction argument here even when the legacy flags decided above
    if reduction == "batchmean" and input.dim() != 0:
        reduced = reduced / input.size()[0]
    return reduced


def _kl_div(input: Tensor, target: Tensor, reduction: str, log_target: bool) -> Tensor:
    for t in (input, target):
        if t.is_complex():
            raise RuntimeError(f"kl_div is not defined for complex tensors (got {t.dtype})")
        if not t.is_floating_point():
            raise RuntimeError(
                f"kl_div needs floating point input and target, got {t.dtype}; convert with "
                ".float()"
            )
    # torch's C++ evaluates each operator's right operand first; the same order here makes
    # autograd sum the gradient terms of the target in the same order (bit for bit)
    if log_target:
        diff = target - input
        loss = torch.exp(target) * diff
    else:
        cross = target * input
        # xlogy: 0 log 0 = 0, so a zero-probability class adds nothing
        loss = torch.xlogy(target, target) - cross
    return _reduction.apply(loss, reduction)


# --------------------------------------------------------------------------- Poisson


def poisson_nll_loss(
    input: Tensor, target: Tensor, log_input: bool = True, full: bool = False,
    size_average: bool | None = None, eps: float = 1e-8, reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:  # fmt: skip
    """Negative log-likelihood of ``target`` under Poisson(rate), up to log(t!):

    l = e^x - t x                   (``log_input``: x is the log-rate)
    l = x - t log(x + eps)          (x is the rate)

    ``full`` adds Stirling's approximation of log(t!), t log t - t + log(2 pi t) / 2, where
    t > 1 (below, log(t!) is 0 for t in {0, 1} and the approximation is poor).
    """
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_reduction(size_average, reduce)
    _reduction.check(reduction)
    return _autocast.run_fp32(  # fp32 policy on CPU and CUDA
        input, _poisson_nll_loss, input, target, log_input, full, eps, reduction
    )


def _poisson_nll_loss(
    input: Tensor, target: Tensor, log_input: bool, full: bool, eps: float, reduction: str
) -> Tensor:
    # right operands first, as torch's C++ evaluates them (the order autograd sums in)
    if log_input:
        cross = target * input
        loss = torch.exp(input) - cross
    else:
        cross = target * torch.log(input + eps)
        loss = input - cross
    if full:
        half_log = 0.5 * torch.log(2 * math.pi * target)
        t_log_t = target * torch.log(target)
        stirling = (t_log_t - target) + half_log
        loss = loss + stirling.masked_fill(target <= 1, 0)
    return _reduction.apply(loss, reduction)


# --------------------------------------------------------------------------- Gaussian


def gaussian_nll_loss(
    input: Tensor,
    target: Tensor,
    var: Tensor | float,
    full: bool = False,
    eps: float = 1e-6,
    reduction: str = "mean",
) -> Tensor:
    """Negative log-likelihood of ``target`` under N(input, var), up to a constant:

    l = (log max(var, eps) + (x - t)^2 / max(var, eps)) / 2   (+ log(2 pi) / 2 with ``full``)

    ``var`` is one variance per element (heteroscedastic), or broadcasts over one dimension
    of size 1 or a missing last dimension (homoscedastic), or is one float for all. The
    floor at ``eps`` is applied outside autograd: the variance's gradient is that of the
    formula at the floored value, passed through as if unfloored.
    """
    if isinstance(var, float):
        if var < 0:
            raise ValueError(f"gaussian_nll_loss: the variance must be >= 0, got var={var}")
        var = var * torch.ones_like(input)
    elif not isinstance(var, Tensor):
        raise TypeError(
            "gaussian_nll_loss: var must be a Tensor or a Python float, got "
            f"{type(var).__name__} (write an int variance as a float, e.g. 1.0)"
        )
    elif not (_compiling() or _vmapped()) and bool(torch.any(var < 0)):
        # a host read: skipped where it cannot run (torch.compile, vmap)
        raise ValueError("gaussian_nll_loss: every variance must be >= 0, got a negative one")
    var = _homoscedastic(input, var)
    _reduction.check(reduction)
    return _autocast.run(input, _gaussian_nll_loss, input, target, var, full, eps, reduction)


def _homoscedastic(input: Tensor, var: Tensor) -> Tensor:
    """``var`` shaped to broadcast against ``input``: the same size; or one dimension short
    at the end (given a trailing 1); or the same rank with exactly one differing dimension,
    where var has size 1 (torch's rule: the differing sizes of var must add up to 1)."""
    if var.size() == input.size():
        return var
    if input.size()[:-1] == var.size():
        return torch.unsqueeze(var, -1)
    if (
        var.dim() == input.dim()
        and sum(v for i, v in zip(input.size(), var.size(), strict=True) if i != v) == 1
    ):
        return var
    raise ValueError(
        f"gaussian_nll_loss: var of size {tuple(var.size())} does not fit input of size "
        f"{tuple(input.size())}; give one variance per element, or a size-1 dimension (or a "
        "missing last one) for a variance shared along it"
    )


def _gaussian_nll_loss(
    input: Tensor,
    target: Tensor,
    var: Tensor,
    full: bool,
    eps: float,
    reduction: str,
    ac: str | None,
) -> Tensor:
    var = var.clone()
    with torch.no_grad():  # the floor is not differentiated (torch's choice)
        var.clamp_(min=eps)
    # log and pow are fp32 under CUDA autocast (on CPU neither is listed)
    log_var = torch.log(_autocast.fp32(ac, var) if ac == "cuda" else var)
    d = input - target
    if ac == "cuda":
        d = _autocast.fp32(ac, d)
    loss = 0.5 * (log_var + d**2 / var)
    if full:
        loss = loss + _HALF_LOG_2PI
    return _reduction.apply(loss, reduction)
