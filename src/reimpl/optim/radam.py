"""RAdam, rectified Adam (Liu et al., "On the Variance of the Adaptive Learning Rate and
Beyond", ICLR 2020).

In its first steps Adam's second-moment average rests on a handful of squared
gradients, so the adaptive step size has a large (for the very first steps, unbounded)
variance; the usual remedy is a hand-tuned learning-rate warm-up. RAdam estimates that
variance from the length :math:`\\rho_t` of the simple moving average the exponential one
approximates and multiplies the adaptive step by a rectification factor :math:`r_t` that
makes the variance what it is at convergence. While :math:`\\rho_t \\le 5` the variance is
not even finite: the update is then plain momentum SGD with bias-corrected momentum.
Weight decay is L2 by default, or decoupled as in AdamW (Loshchilov & Hutter, "Decoupled
Weight Decay Regularization", ICLR 2019), which is what the authors' code does.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from reimpl.optim._checks import check_adam_family
from reimpl.optim._common import (
    TensorList,
    check_capturable_devices,
    foreach_batches,
    foreach_ready,
    grad_with_decay,
    plain_value,
)
from reimpl.optim._fused import CArgs, Forms, adam_family_opts
from reimpl.optim.optimizer import ParamsT, ReimplOptimizer

__all__ = ["RAdam"]

#: below this length of the approximated moving average the rectification is undefined
_RHO_MIN = 5.0


class RAdamTensors(NamedTuple):
    """The tensor lists an update takes, one per role (the state keys)."""

    param: TensorList
    grad: TensorList
    exp_avg: TensorList
    exp_avg_sq: TensorList
    step: TensorList


class RAdamHP(NamedTuple):
    lr: float | Tensor
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    decoupled_weight_decay: bool
    maximize: bool
    capturable: bool
    differentiable: bool
    has_complex: bool


class RAdam(ReimplOptimizer, torch.optim.RAdam):
    r"""RAdam: Adam whose adaptive step is rectified by the variance of its denominator.

    For each parameter :math:`\theta` with gradient :math:`g_t` at step :math:`t`
    (:math:`g_t \leftarrow -g_t` when ``maximize``), learning rate :math:`\gamma`,
    weight decay :math:`\lambda`:

    .. math::
        \theta_{t-1} &\leftarrow (1 - \gamma\lambda)\,\theta_{t-1}
            \quad\text{if decoupled, or else}\quad g_t \leftarrow g_t + \lambda\theta_{t-1} \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2 \qquad (m_0 = v_0 = 0) \\
        \hat m_t &= m_t / (1 - \beta_1^t) \\
        \rho_\infty &= \frac{2}{1 - \beta_2} - 1, \qquad
        \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t} \\
        \theta_t &= \theta_{t-1} - \gamma\, \hat m_t\, r_t\,
            \frac{\sqrt{1 - \beta_2^t}}{\sqrt{v_t} + \epsilon},
            \quad r_t = \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}
            {(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}} \quad\text{if } \rho_t > 5 \\
        \theta_t &= \theta_{t-1} - \gamma\, \hat m_t \quad\text{otherwise}

    State keys: ``step``, ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`).

    Args: as :class:`torch.optim.RAdam` — ``lr`` (float or one-element Tensor),
    ``betas``, ``eps``, ``weight_decay``, ``decoupled_weight_decay``, and keyword-only
    ``foreach``, ``maximize``, ``capturable``, ``differentiable`` — plus ``fused`` (last),
    which torch's RAdam lacks: one pass over memory per tensor (the C kernel on CPU;
    elsewhere the multi-tensor form with 16-bit tensors widened to float32).
    """

    _Tensors = RAdamTensors
    _HP = RAdamHP
    _group_defaults = (("decoupled_weight_decay", False), ("capturable", False))

    def _forms(self) -> Forms:
        return Forms(_single_tensor_radam, _multi_tensor_radam, _c_args, "radam")

    def __init__(
        self, params: ParamsT, lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8, weight_decay: float = 0, decoupled_weight_decay: bool = False, *,
        foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
        differentiable: bool = False, fused: bool | None = None,
    ) -> None:  # fmt: skip
        check_adam_family(lr, eps, betas, weight_decay)
        defaults = {
            "lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
            "maximize": maximize, "foreach": foreach, "capturable": capturable,
            "decoupled_weight_decay": decoupled_weight_decay, "differentiable": differentiable,
        }  # fmt: skip
        self._setup(params, defaults, fused_beyond_torch=fused)


def _rectification(rho_t: Any, rho_inf: float) -> Any:
    """:math:`r_t`, the factor that brings the adaptive step's variance to its limit."""
    return ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5


def _adaptive(v: Tensor, bc2: Any, hp: RAdamHP) -> Tensor:
    """The adaptive step size ``sqrt(1 - beta2^t) / (sqrt(v) + eps)``."""
    root = v.sqrt()
    root = root.add(hp.eps) if hp.differentiable else root.add_(hp.eps)
    return bc2**0.5 / root  # type: ignore[no-any-return]


def _single_tensor_radam(t: RAdamTensors, hp: RAdamHP) -> None:
    """Per-tensor loop: Adam's moments, rectified once the variance is tractable."""
    params, grads, exp_avgs, exp_avg_sqs, steps = t
    lr, beta1, beta2 = hp.lr, hp.beta1, hp.beta2
    rho_inf = 2 / (1 - beta2) - 1
    for i, param in enumerate(params):
        if hp.capturable:
            check_capturable_devices([param], [steps[i]])
        grad, m, v = grads[i], exp_avgs[i], exp_avg_sqs[i]
        # real views first: torch adds the L2 term to the real view, and a complex add
        # rounds differently (the parity check found 1 ulp)
        if torch.is_complex(param):
            param, grad, m, v = (torch.view_as_real(x) for x in (param, grad, m, v))
        steps[i] += 1
        # capturable: t stays a device tensor (no host sync), else it is read as a number
        n: Any = steps[i] if hp.capturable else plain_value(steps[i])
        grad = grad_with_decay(grad, param, hp)

        m.lerp_(grad, 1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bc1, bc2 = 1 - beta1**n, 1 - beta2**n
        m_hat = m / bc1
        rho_t = rho_inf - 2 * n * beta2**n / bc2

        if hp.capturable:  # both branches computed, one kept: no data-dependent control flow
            scale = torch.where(
                rho_t > _RHO_MIN, _rectification(rho_t, rho_inf) * _adaptive(v, bc2, hp), 1.0
            )
            param.add_(m_hat * lr * scale, alpha=-1.0)
        elif rho_t > _RHO_MIN:
            param.add_(
                m_hat * lr * _adaptive(v, bc2, hp) * _rectification(rho_t, rho_inf), alpha=-1.0
            )
        else:
            param.add_(m_hat * lr, alpha=-1.0)


def _one_minus_pow(beta: float, steps: TensorList) -> TensorList:
    """``1 - beta^t`` for each step counter, on the counters' device."""
    out = list(torch._foreach_pow(beta, steps))  # type: ignore[arg-type]
    torch._foreach_neg_(out)
    torch._foreach_add_(out, 1)
    return out


def _device_scales(steps: TensorList, hp: RAdamHP, rho_inf: float) -> tuple[Any, Any]:
    """capturable: per tensor, the rectified step's ``-gamma r_t sqrt(1 - beta2^t) /
    (1 - beta1^t)`` and the unrectified one's ``-gamma / (1 - beta1^t)`` (each 0 when the
    other applies), as one-element tensors beside the counters: no host sync."""
    lr, beta1, beta2 = hp.lr, hp.beta1, hp.beta2
    bc2 = _one_minus_pow(beta2, steps)
    rho = list(torch._foreach_pow(beta2, steps))  # type: ignore[arg-type]
    torch._foreach_mul_(rho, steps)
    torch._foreach_mul_(rho, 2)
    torch._foreach_div_(rho, bc2)
    torch._foreach_neg_(rho)
    torch._foreach_add_(rho, rho_inf)  # rho_t

    r = list(torch._foreach_sub(rho, 4))
    torch._foreach_mul_(r, torch._foreach_sub(rho, 2))
    torch._foreach_mul_(r, rho_inf)
    torch._foreach_div_(r, torch._foreach_mul(rho, (rho_inf - 4) * (rho_inf - 2)))
    torch._foreach_sqrt_(r)
    r = [torch.where(x > _RHO_MIN, ri, 0.0) for ri, x in zip(r, rho, strict=True)]

    bc1 = _one_minus_pow(beta1, steps)
    plain = [torch.where(ri > 0, 0.0, 1.0) for ri in r]
    torch._foreach_mul_(plain, lr)
    torch._foreach_div_(plain, bc1)
    torch._foreach_neg_(plain)

    rect = _one_minus_pow(beta2, steps)
    torch._foreach_sqrt_(rect)
    torch._foreach_mul_(rect, lr)
    torch._foreach_mul_(rect, r)
    torch._foreach_neg_(rect)
    torch._foreach_div_(rect, bc1)
    return rect, plain


def _host_scales(steps: TensorList, hp: RAdamHP, rho_inf: float) -> tuple[Any, Any]:
    """The same two scales from the counters read as numbers (see :func:`_device_scales`)."""
    lr, beta1, beta2 = hp.lr, hp.beta1, hp.beta2
    rect, plain = [], []
    for n in (plain_value(s) for s in steps):
        rho_t = rho_inf - 2 * n * beta2**n / (1 - beta2**n)
        r = _rectification(rho_t, rho_inf) if rho_t > _RHO_MIN else 0
        bc1 = 1 - beta1**n
        plain.append((lr * (0 if r > 0 else 1.0) / bc1) * -1)
        rect.append(((1 - beta2**n) ** 0.5) * (lr * r / bc1) * -1)
    return rect, plain


def _multi_tensor_radam(t: RAdamTensors, hp: RAdamHP) -> None:
    """``torch._foreach_*`` per (device, dtype) batch, the rectification per tensor."""
    if not foreach_ready(t, hp):
        return
    beta1, beta2 = hp.beta1, hp.beta2
    rho_inf = 2 / (1 - beta2) - 1
    for b, d in foreach_batches(t, hp):
        torch._foreach_lerp_(b.exp_avg, d, 1 - beta1)
        torch._foreach_mul_(b.exp_avg_sq, beta2)
        torch._foreach_addcmul_(b.exp_avg_sq, d, d, 1 - beta2)
        del d
        scales = _device_scales if hp.capturable else _host_scales
        rect, plain = scales(b.step, hp, rho_inf)
        # the step per element, rect / (sqrt(v) + eps) + plain (one of the two scales is
        # zero), formed in place as 1 / ((sqrt(v) + eps) / rect) + plain
        factor = list(torch._foreach_sqrt(b.exp_avg_sq))
        torch._foreach_add_(factor, hp.eps)
        torch._foreach_div_(factor, rect)
        torch._foreach_reciprocal_(factor)
        torch._foreach_add_(factor, plain)
        torch._foreach_addcmul_(b.param, b.exp_avg, factor)


def _c_args(t: RAdamTensors, hp: RAdamHP) -> CArgs:
    """The C kernel's scalars, and per tensor 1 - beta1^t, the rectification (0 while the
    variance is not yet tractable) and sqrt(1 - beta2^t)."""
    lr = plain_value(hp.lr)
    rho_inf = 2 / (1 - hp.beta2) - 1
    bc1, rect, bc2_sqrt = [], [], []
    for s in t.step:
        n = plain_value(s)
        bc2 = 1 - hp.beta2**n
        rho_t = rho_inf - 2 * n * hp.beta2**n / bc2
        bc1.append(1 - hp.beta1**n)
        rect.append(_rectification(rho_t, rho_inf) if rho_t > _RHO_MIN else 0.0)
        bc2_sqrt.append(bc2**0.5)
    return CArgs(adam_family_opts(hp, lr), [bc1, rect, bc2_sqrt])
