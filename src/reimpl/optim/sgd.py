"""Stochastic gradient descent with optional momentum: classic ("heavy ball", Polyak
1964) or Nesterov's, in the form of Sutskever et al. (2013).

Momentum accumulates a velocity from past gradients, which damps oscillation across
steep directions and speeds travel along shallow ones; Nesterov's variant evaluates the
step as if the velocity had already been applied.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from reimpl.kernels import cpu_fused
from reimpl.optim._checks import check_hparams
from reimpl.optim._common import (
    TensorList,
    choose_path,
    grad_with_decay,
    grads_with_decay,
    group_by_device_and_dtype,
    is_compiling,
    plain_value,
)
from reimpl.optim._fused import CArgs, Forms
from reimpl.optim.optimizer import ParamsT, ReimplOptimizer

__all__ = ["SGD"]


class SGDTensors(NamedTuple):
    """The tensor lists an update takes, one per role (the state keys)."""

    param: TensorList
    grad: TensorList
    momentum_buffer: list[Tensor | None]


class SGDHP(NamedTuple):
    lr: float | Tensor
    momentum: float
    dampening: float
    weight_decay: float | Tensor
    nesterov: bool
    maximize: bool
    has_sparse_grad: bool


class SGD(ReimplOptimizer, torch.optim.SGD):
    r"""Stochastic gradient descent, optionally with momentum.

    For each parameter :math:`\theta` with gradient :math:`g_t` at step :math:`t`
    (:math:`g_t \leftarrow -g_t` when ``maximize``):

    .. math::
        g_t &\leftarrow g_t + \lambda\,\theta_{t-1}
            \quad\text{(L2 weight decay } \lambda\text{)} \\
        b_1 &= g_1, \qquad b_t = \mu\, b_{t-1} + (1 - \tau)\, g_t
            \quad\text{(momentum } \mu\text{, dampening } \tau\text{)} \\
        d_t &= g_t + \mu\, b_t \text{ if Nesterov, else } b_t
            \quad (d_t = g_t \text{ when } \mu = 0) \\
        \theta_t &= \theta_{t-1} - \gamma\, d_t

    With :math:`\tau = 1 - \mu` the buffer :math:`b_t` is an exponentially weighted
    average of past gradients; the default :math:`\tau = 0` is the classic "heavy ball"
    sum. The buffer is kept in ``state[p]["momentum_buffer"]`` (absent when
    :math:`\mu = 0`, ``None`` until the first step). Sparse gradients are supported on the
    per-tensor and multi-tensor paths.

    Args: as :class:`torch.optim.SGD` — ``lr`` (float or one-element Tensor),
    ``momentum``, ``dampening``, ``weight_decay`` (float or Tensor), ``nesterov``, and
    keyword-only ``maximize``, ``foreach``, ``differentiable``, ``fused``.
    """

    _Tensors = SGDTensors
    _HP = SGDHP
    _group_defaults = (("nesterov", False), ("fused", False))
    _lazy = ("momentum_buffer",)
    _sparse_ok = True

    def _forms(self) -> Forms:
        return Forms(_single_tensor_sgd, _multi_tensor_sgd, _c_args, "sgd")

    def __init__(
        self, params: ParamsT, lr: float | Tensor = 1e-3, momentum: float = 0,
        dampening: float = 0, weight_decay: float | Tensor = 0, nesterov: bool = False, *,
        maximize: bool = False, foreach: bool | None = None, differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:  # fmt: skip
        # torch's SGD rejects only values below zero, so NaN gets through
        check_hparams(lr=lr, momentum=momentum, weight_decay=weight_decay, nan_ok=True)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                "nesterov=True needs momentum > 0 and dampening == 0 "
                f"(got momentum={momentum}, dampening={dampening})"
            )
        defaults = {
            "lr": lr, "momentum": momentum, "dampening": dampening,
            "weight_decay": weight_decay, "nesterov": nesterov, "maximize": maximize,
            "foreach": foreach, "differentiable": differentiable, "fused": fused,
        }  # fmt: skip
        self._setup(params, defaults)

    def _keeps(self, group: dict[str, Any], key: str) -> bool:
        return group["momentum"] != 0

    def _path(self, group: dict[str, Any], params: TensorList) -> str:
        # torch decides SGD's default path without looking at `differentiable`
        return choose_path(
            params, foreach=group["foreach"], fused=group["fused"], differentiable=False
        )


def _single_tensor_sgd(t: SGDTensors, hp: SGDHP) -> None:
    """Per-tensor loop. Fills ``bufs[i]`` on the first step with momentum."""
    params, grads, bufs = t
    lr, mu = hp.lr, hp.momentum
    for i, param in enumerate(params):
        d = grad_with_decay(grads[i], param, hp)
        if mu != 0:
            buf = bufs[i]
            if buf is None:
                buf = bufs[i] = d.detach().clone()
            else:
                buf.mul_(mu).add_(d, alpha=1 - hp.dampening)
            d = d.add(buf, alpha=mu) if hp.nesterov else buf
        if isinstance(lr, Tensor) and lr.requires_grad:
            param.addcmul_(d, lr, value=-1)  # keeps the graph to a learnable lr
        else:
            param.add_(d, alpha=-lr)  # type: ignore[arg-type]  # a 1-element Tensor lr is read as a number


def _multi_tensor_sgd(t: SGDTensors, hp: SGDHP) -> None:
    """``torch._foreach_*`` over each (device, dtype) batch."""
    params, grads, bufs = t
    if not params:
        return
    lr, mu = hp.lr, hp.momentum
    batches = group_by_device_and_dtype([params, grads, bufs], with_indices=True)
    for (b_params, b_grads, b_bufs), indices in batches.values():
        sparse_here = hp.has_sparse_grad and any(g.is_sparse for g in b_grads)
        d = grads_with_decay(b_grads, b_params, hp)
        if mu != 0:
            if all(b is not None for b in b_bufs):
                moms: TensorList = list(b_bufs)
                torch._foreach_mul_(moms, mu)
                torch._foreach_add_(moms, d, alpha=1 - hp.dampening)
            else:  # some buffers start now: per tensor, as in the loop
                moms = []
                for j, b in enumerate(b_bufs):
                    if b is None:
                        b = b_bufs[j] = bufs[indices[j]] = d[j].detach().clone()
                    else:
                        b.mul_(mu).add_(d[j], alpha=1 - hp.dampening)
                    moms.append(b)
            if hp.nesterov:
                torch._foreach_add_(d, moms, alpha=mu)
            else:
                d = moms
        if sparse_here:
            for p, g in zip(b_params, d, strict=True):
                p.add_(g, alpha=-lr)
        elif isinstance(lr, Tensor) and is_compiling():
            torch._foreach_add_(b_params, torch._foreach_mul(d, -lr))
        else:
            torch._foreach_add_(b_params, d, alpha=-lr)  # type: ignore[arg-type]  # a 1-element Tensor lr is read as a number


def _c_args(t: SGDTensors, hp: SGDHP) -> CArgs:
    """The C kernel's scalars, and the buffers that start this step (the kernel sets them
    to the gradient): made here, flagged in ``first``."""
    params, bufs = t.param, t.momentum_buffer
    first = [0] * len(params)
    if hp.momentum != 0:
        for i, p in enumerate(params):
            if bufs[i] is None:
                bufs[i], first[i] = torch.empty_like(p), 1
    opts = cpu_fused.SGDOpts(
        lr=plain_value(hp.lr),
        wd=plain_value(hp.weight_decay),
        momentum=hp.momentum,
        undamped=1 - hp.dampening,
        nesterov=hp.nesterov,
        maximize=hp.maximize,
    )
    return CArgs(opts, first=first)
