"""Adadelta (Zeiler, "ADADELTA: An Adaptive Learning Rate Method", arXiv:1212.5701, 2012):
a per-coordinate step size that needs no global learning rate to be tuned.

AdaGrad divides by the root of *all* past squared gradients, so its steps only shrink.
Adadelta keeps two exponential moving averages instead, of squared gradients and of
squared updates, and scales each gradient by the ratio of their roots. The update then
carries the units of the parameter (a ratio of RMS update to RMS gradient times a
gradient), and old history fades at rate ``rho``. ``lr`` only rescales the final update
(1 in the paper).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from reimpl.kernels import cpu_fused
from reimpl.optim._checks import check_hparams
from reimpl.optim._common import (
    TensorList,
    check_capturable_devices,
    foreach_batches,
    foreach_ready,
    grad_with_decay,
    plain_value,
)
from reimpl.optim._fused import CArgs, Forms
from reimpl.optim.optimizer import ParamsT, ReimplOptimizer

__all__ = ["Adadelta"]


class AdadeltaTensors(NamedTuple):
    """The tensor lists an update takes, one per role (the state keys)."""

    param: TensorList
    grad: TensorList
    square_avg: TensorList
    acc_delta: TensorList
    step: TensorList


class AdadeltaHP(NamedTuple):
    lr: float | Tensor
    rho: float
    eps: float
    weight_decay: float
    maximize: bool
    differentiable: bool
    capturable: bool
    has_complex: bool


class Adadelta(ReimplOptimizer, torch.optim.Adadelta):
    r"""Adadelta: the gradient rescaled by RMS(past updates) / RMS(past gradients).

    Per parameter :math:`\theta`, at step :math:`t`, from its gradient :math:`g_t`
    (negated when ``maximize``), with decay :math:`\rho`, weight decay :math:`\lambda`
    and learning rate :math:`\gamma`:

    .. math::
        g_t &\leftarrow g_t + \lambda\,\theta_{t-1} \\
        v_t &= \rho\, v_{t-1} + (1 - \rho)\, g_t^2
            \quad\text{(moving average of squared gradients, } v_0 = 0\text{)} \\
        \Delta_t &= \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g_t \\
        u_t &= \rho\, u_{t-1} + (1 - \rho)\, \Delta_t^2
            \quad\text{(moving average of squared updates, } u_0 = 0\text{)} \\
        \theta_t &= \theta_{t-1} - \gamma\, \Delta_t

    Complex params are updated as pairs of reals. State keys: ``step``, ``square_avg``
    (:math:`v`), ``acc_delta`` (:math:`u`).

    Args: as :class:`torch.optim.Adadelta` — ``lr`` (float or one-element Tensor),
    ``rho`` (in [0, 1]), ``eps``, ``weight_decay``, ``foreach``, and keyword-only
    ``capturable``, ``maximize``, ``differentiable`` — plus ``fused`` (last), which
    torch's Adadelta lacks: one pass over memory per tensor (:mod:`reimpl.optim._fused`).
    """

    _Tensors = AdadeltaTensors
    _HP = AdadeltaHP
    _group_defaults = (("capturable", False),)

    def _forms(self) -> Forms:
        return Forms(_single_tensor_adadelta, _multi_tensor_adadelta, _c_args, "adadelta")

    def __init__(
        self, params: ParamsT, lr: float | Tensor = 1.0, rho: float = 0.9, eps: float = 1e-6,
        weight_decay: float = 0, foreach: bool | None = None, *, capturable: bool = False,
        maximize: bool = False, differentiable: bool = False, fused: bool | None = None,
    ) -> None:  # fmt: skip
        check_hparams(lr=lr)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho} (it must be in [0, 1])")
        check_hparams(eps=eps, weight_decay=weight_decay)
        defaults = {
            "lr": lr, "rho": rho, "eps": eps, "weight_decay": weight_decay,
            "maximize": maximize, "capturable": capturable, "foreach": foreach,
            "differentiable": differentiable,
        }  # fmt: skip
        self._setup(params, defaults, fused_beyond_torch=fused)


def _single_tensor_adadelta(t: AdadeltaTensors, hp: AdadeltaHP) -> None:
    """Per-tensor loop: both running averages, then the unit-corrected step."""
    params, grads, square_avgs, acc_deltas, steps = t
    if hp.capturable:  # every param checked before any moves
        check_capturable_devices(params, steps)
    lr, rho, eps = hp.lr, hp.rho, hp.eps
    for i, param in enumerate(params):
        steps[i] += 1
        grad = grad_with_decay(grads[i], param, hp)
        cplx = torch.is_complex(param)
        real = torch.view_as_real if cplx else (lambda x: x)
        grad, v, u = real(grad), real(square_avgs[i]), real(acc_deltas[i])
        v.mul_(rho).addcmul_(grad, grad, value=1 - rho)
        rms_grad = v.add(eps).sqrt_()
        delta = u.add(eps).sqrt_()
        if hp.differentiable:  # autograd saved sqrt's output; divide a copy
            delta = delta.clone()
        delta.div_(rms_grad).mul_(grad)
        u.mul_(rho).addcmul_(delta, delta, value=1 - rho)
        if cplx:  # added as complex numbers, as torch does: a real view rounds differently
            delta = torch.view_as_complex(delta)
        param.add_(delta, alpha=-lr)  # type: ignore[arg-type]  # a 1-element Tensor lr is read as a number


def _multi_tensor_adadelta(t: AdadeltaTensors, hp: AdadeltaHP) -> None:
    """``torch._foreach_*`` per (device, dtype) batch: the same two averages, list-wise."""
    # torch refuses these before it looks at whether any param has a gradient
    if not foreach_ready(t, hp, empty_first=False):
        return
    lr, rho, eps = hp.lr, hp.rho, hp.eps
    tensor_lr = hp.capturable and isinstance(lr, Tensor)
    for b, d in foreach_batches(t, hp):
        torch._foreach_mul_(b.square_avg, rho)
        torch._foreach_addcmul_(b.square_avg, d, d, value=1 - rho)
        rms_grad = torch._foreach_add(b.square_avg, eps)
        torch._foreach_sqrt_(rms_grad)
        deltas = list(torch._foreach_add(b.acc_delta, eps))
        torch._foreach_sqrt_(deltas)
        torch._foreach_div_(deltas, rms_grad)
        torch._foreach_mul_(deltas, d)
        torch._foreach_mul_(b.acc_delta, rho)
        torch._foreach_addcmul_(b.acc_delta, deltas, deltas, value=1 - rho)
        if tensor_lr:
            # on device: a Tensor alpha would be read on the host (no CUDA-graph capture)
            torch._foreach_mul_(deltas, -lr)
            torch._foreach_add_(b.param, deltas)
        else:
            torch._foreach_add_(b.param, deltas, alpha=-lr)  # type: ignore[arg-type]  # a 1-element Tensor lr is read as a number


def _c_args(t: AdadeltaTensors, hp: AdadeltaHP) -> CArgs:
    """The C kernel's scalars (1 - rho formed here, in double precision)."""
    opts = cpu_fused.AdadeltaOpts(
        lr=plain_value(hp.lr), rho=hp.rho, w=1 - hp.rho, eps=hp.eps, wd=hp.weight_decay,
        maximize=hp.maximize,
    )  # fmt: skip
    return CArgs(opts)
