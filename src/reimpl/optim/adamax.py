"""Adamax (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, sec. 7.1).

Adam scales each coordinate's step by an L2-style norm of its past gradients (the root of
a moving average of squares). Section 7.1 of the paper generalises that to an L^p norm and
takes p -> infinity: the limit is a decaying running maximum of the gradient's magnitude,
``u_t = max(beta2 * u_{t-1}, |g_t|)``. It needs no square root, no bias correction of its
own (a maximum started at zero is not biased towards zero the way an average is), and a
step is bounded by the learning rate in every coordinate, since ``|m_t| <= u_t`` up to the
first moment's bias correction. ``eps`` is added to ``|g_t|`` so ``u_t`` is never zero.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from reimpl.kernels import cpu_fused
from reimpl.optim._checks import check_adam_family
from reimpl.optim._common import TensorList, begin_step, foreach_batches, foreach_ready, plain_value
from reimpl.optim._fused import CArgs, Forms
from reimpl.optim.optimizer import ParamsT, ReimplOptimizer

__all__ = ["Adamax"]


class AdamaxTensors(NamedTuple):
    """The tensor lists an update takes, one per role (the state keys)."""

    param: TensorList
    grad: TensorList
    exp_avg: TensorList
    exp_inf: TensorList
    step: TensorList


class AdamaxHP(NamedTuple):
    lr: float | Tensor
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    maximize: bool
    differentiable: bool
    capturable: bool
    has_complex: bool


class Adamax(ReimplOptimizer, torch.optim.Adamax):
    r"""Adamax: Adam with the infinity norm in place of the second moment.

    For each parameter :math:`\theta` with gradient :math:`g_t` at step :math:`t`
    (:math:`g_t \leftarrow -g_t` when ``maximize``), learning rate :math:`\gamma`,
    weight decay :math:`\lambda`:

    .. math::
        g_t &\leftarrow g_t + \lambda\,\theta_{t-1} \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t
            \quad\text{(first moment, } m_0 = 0\text{)} \\
        u_t &= \max(\beta_2 u_{t-1},\ |g_t| + \epsilon)
            \quad\text{(decaying infinity norm, } u_0 = 0\text{)} \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t}\, \frac{m_t}{u_t}

    Complex parameters are updated as their real and imaginary parts (each its own
    coordinate). State keys: ``step``, ``exp_avg`` (:math:`m`), ``exp_inf`` (:math:`u`).

    Args: as :class:`torch.optim.Adamax` -- ``lr`` (float or one-element Tensor),
    ``betas``, ``eps``, ``weight_decay``, ``foreach``, and keyword-only ``maximize``,
    ``differentiable``, ``capturable`` -- plus ``fused`` (keyword-only, last), which torch's
    Adamax lacks: one pass over memory per tensor (:mod:`reimpl.optim._fused`).
    """

    _Tensors = AdamaxTensors
    _HP = AdamaxHP
    _group_defaults = (("capturable", False),)

    def _forms(self) -> Forms:
        return Forms(_single_tensor_adamax, _multi_tensor_adamax, _c_args, "adamax")

    def __init__(
        self, params: ParamsT, lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 0, foreach: bool | None = None, *, maximize: bool = False,
        differentiable: bool = False, capturable: bool = False, fused: bool | None = None,
    ) -> None:  # fmt: skip
        check_adam_family(lr, eps, betas, weight_decay)
        defaults = {
            "lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
            "foreach": foreach, "maximize": maximize, "differentiable": differentiable,
            "capturable": capturable,
        }  # fmt: skip
        self._setup(params, defaults, fused_beyond_torch=fused)


def _single_tensor_adamax(t: AdamaxTensors, hp: AdamaxHP) -> None:
    """Per-tensor loop: first moment and decaying max norm, then the step."""
    params, _, exp_avgs, exp_infs, steps = t
    lr, beta1, beta2, eps = hp.lr, hp.beta1, hp.beta2, hp.eps
    for i, param in enumerate(params):
        grad = begin_step(t, i, hp)
        m, u = exp_avgs[i], exp_infs[i]
        if torch.is_complex(param):
            param, grad, m, u = (torch.view_as_real(x) for x in (param, grad, m, u))

        m.lerp_(grad, 1 - beta1)
        u.mul_(beta2)
        if hp.differentiable:
            # maximum(..., out=u) would cut autograd's path through u: take the max of the
            # stacked pair out of place (amax shares the gradient evenly between ties)
            u.copy_(torch.stack([u, grad.abs().add_(eps)]).amax(0))
        else:
            torch.maximum(u, grad.abs().add_(eps), out=u)

        if hp.capturable:
            # on device, no host sync: param += m / (u * -(1 - beta1^t) / lr)
            neg_bc_over_lr = (beta1 ** steps[i] - 1).div_(lr)
            param.addcdiv_(m, u * neg_bc_over_lr)
        else:
            step_size = lr / (1 - beta1 ** plain_value(steps[i]))
            param.addcdiv_(m, u, value=-step_size)  # type: ignore[arg-type]  # a 0-dim Tensor lr is read as a number


def _multi_tensor_adamax(t: AdamaxTensors, hp: AdamaxHP) -> None:
    """``torch._foreach_*`` per (device, dtype) batch, the max norm by ``_foreach_maximum_``."""
    if not foreach_ready(t, hp, empty_first=False):
        return
    lr, beta1, beta2, eps = hp.lr, hp.beta1, hp.beta2, hp.eps
    for b, d in foreach_batches(t, hp):
        torch._foreach_lerp_(b.exp_avg, d, 1 - beta1)
        torch._foreach_mul_(b.exp_inf, beta2)
        # |g| + eps, in place where d is already our own copy (never into .grad)
        if d is b.grad:
            d = list(torch._foreach_abs(d))
        else:
            torch._foreach_abs_(d)
        torch._foreach_add_(d, eps)
        torch._foreach_maximum_(b.exp_inf, d)
        del d

        if hp.capturable:
            # on device: -(1 - beta1^t) / lr per tensor, then param += m / (u * that)
            neg_bc_over_lr = list(torch._foreach_pow(beta1, b.step))
            torch._foreach_sub_(neg_bc_over_lr, 1)
            torch._foreach_div_(neg_bc_over_lr, lr)
            denom = torch._foreach_mul(b.exp_inf, neg_bc_over_lr)
            torch._foreach_addcdiv_(b.param, b.exp_avg, denom)
        else:
            lr_value = plain_value(lr)
            neg_step_sizes = [(lr_value / (1 - beta1 ** plain_value(s))) * -1 for s in b.step]
            torch._foreach_addcdiv_(b.param, b.exp_avg, b.exp_inf, neg_step_sizes)


def _c_args(t: AdamaxTensors, hp: AdamaxHP) -> CArgs:
    """The C kernel's scalars (1 - beta1 formed here, in double precision) and per tensor
    the step size lr / (1 - beta1^t)."""
    lr = plain_value(hp.lr)
    opts = cpu_fused.AdamaxOpts(
        w1=1 - hp.beta1, b2=hp.beta2, eps=hp.eps, wd=hp.weight_decay, maximize=hp.maximize
    )
    return CArgs(opts, [[lr / (1 - hp.beta1 ** plain_value(s)) for s in t.step]])
