"""RMSprop (Hinton, Srivastava & Swersky, Neural Networks for Machine Learning, lecture
6e, 2012): divide the gradient by a moving root-mean-square of recent gradients.

Like AdaGrad it scales each coordinate by its gradient history, but the history is an
exponential moving average, so old gradients fade and the step size does not only
shrink. The centered variant (Graves, 2013) divides by an estimate of the gradient's
standard deviation instead.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from reimpl.kernels import cpu_fused
from reimpl.optim._checks import check_hparams
from reimpl.optim._common import TensorList, begin_step, foreach_batches, foreach_ready, plain_value
from reimpl.optim._fused import CArgs, Forms
from reimpl.optim.optimizer import ParamsT, ReimplOptimizer

__all__ = ["RMSprop"]


class RMSpropTensors(NamedTuple):
    """The tensor lists an update takes, one per role (the state keys)."""

    param: TensorList
    grad: TensorList
    square_avg: TensorList
    grad_avg: TensorList
    momentum_buffer: TensorList
    step: TensorList


class RMSpropHP(NamedTuple):
    lr: float | Tensor
    alpha: float
    eps: float
    weight_decay: float
    momentum: float
    centered: bool
    maximize: bool
    differentiable: bool
    capturable: bool
    has_complex: bool


class RMSprop(ReimplOptimizer, torch.optim.RMSprop):
    r"""RMSprop, optionally centered, optionally with momentum.

    Per parameter :math:`\theta`, at step :math:`t`, from its gradient :math:`g_t`
    (negated when ``maximize``), with learning rate :math:`\gamma`:

    .. math::
        g_t &\leftarrow g_t + \lambda\,\theta_{t-1} \\
        v_t &= \alpha\, v_{t-1} + (1 - \alpha)\, g_t^2
            \quad\text{(moving average of squares, } v_0 = 0\text{)} \\
        \bar g_t &= \alpha\, \bar g_{t-1} + (1 - \alpha)\, g_t
            \quad\text{(centered only, } \bar g_0 = 0\text{)} \\
        r_t &= \sqrt{v_t - \bar g_t^2} + \epsilon \text{ if centered, else }
            \sqrt{v_t} + \epsilon \\
        b_t &= \mu\, b_{t-1} + g_t / r_t, \qquad \theta_t = \theta_{t-1} - \gamma\, b_t
            \quad\text{if momentum } \mu > 0 \\
        \theta_t &= \theta_{t-1} - \gamma\, g_t / r_t \quad\text{otherwise}

    State keys: ``step``, ``square_avg`` (:math:`v`), ``grad_avg`` (:math:`\bar g`,
    centered only), ``momentum_buffer`` (:math:`b`, momentum > 0 only).

    Args: as :class:`torch.optim.RMSprop` — ``lr``, ``alpha``, ``eps``,
    ``weight_decay``, ``momentum``, ``centered``, ``capturable``, ``foreach``,
    ``maximize``, ``differentiable`` — plus ``fused`` (last, so torch's positional order
    holds), which torch's RMSprop lacks: one pass over memory per tensor per step.
    """

    _Tensors = RMSpropTensors
    _HP = RMSpropHP
    _group_defaults = (("momentum", 0), ("centered", False), ("capturable", False))

    def _forms(self) -> Forms:
        return Forms(_single_tensor_rmsprop, _multi_tensor_rmsprop, _c_args, "rmsprop")

    def __init__(
        self, params: ParamsT, lr: float | Tensor = 1e-2, alpha: float = 0.99,
        eps: float = 1e-8, weight_decay: float = 0, momentum: float = 0,
        centered: bool = False, capturable: bool = False, foreach: bool | None = None,
        maximize: bool = False, differentiable: bool = False, fused: bool | None = None,
    ) -> None:  # fmt: skip
        check_hparams(lr=lr, eps=eps, momentum=momentum, weight_decay=weight_decay, alpha=alpha)
        defaults = {
            "lr": lr, "momentum": momentum, "alpha": alpha, "eps": eps, "centered": centered,
            "weight_decay": weight_decay, "capturable": capturable, "foreach": foreach,
            "maximize": maximize, "differentiable": differentiable,
        }  # fmt: skip
        self._setup(params, defaults, fused_beyond_torch=fused)

    def _new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        state = ReimplOptimizer._new_state(self, p, group)
        # torch's key order, which differs from the kernels' order of roles
        order = ("step", "square_avg", "momentum_buffer", "grad_avg")
        return {k: state[k] for k in order if k in state}

    def _keeps(self, group: dict[str, Any], key: str) -> bool:
        if key == "grad_avg":
            return bool(group["centered"])
        return key != "momentum_buffer" or group["momentum"] > 0


def _single_tensor_rmsprop(t: RMSpropTensors, hp: RMSpropHP) -> None:
    """Per-tensor loop: the squared-gradient average, then the scaled step."""
    params, _, square_avgs, grad_avgs, momentum_bufs, _ = t
    lr, alpha = hp.lr, hp.alpha
    for i, param in enumerate(params):
        grad = begin_step(t, i, hp)
        real = torch.view_as_real if torch.is_complex(param) else (lambda x: x)
        param, grad, v = real(param), real(grad), real(square_avgs[i])
        v.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        if hp.centered:
            g_avg = real(grad_avgs[i])
            g_avg.lerp_(grad, 1 - alpha)
            rms = v.addcmul(g_avg, g_avg, value=-1).sqrt_()
        else:
            rms = v.sqrt()
        rms = rms.add(hp.eps) if hp.differentiable else rms.add_(hp.eps)
        if hp.momentum > 0:
            buf = real(momentum_bufs[i])
            buf.mul_(hp.momentum).addcdiv_(grad, rms)
            param.add_(buf, alpha=-lr)  # type: ignore[arg-type]  # a 1-element Tensor lr is read as a number
        else:
            param.addcdiv_(grad, rms, value=-lr)  # type: ignore[arg-type]  # a 1-element Tensor lr is read as a number


def _multi_tensor_rmsprop(t: RMSpropTensors, hp: RMSpropHP) -> None:
    """``torch._foreach_*`` over each (device, dtype) batch."""
    if not foreach_ready(t, hp):
        return
    lr, alpha = hp.lr, hp.alpha
    tensor_lr = hp.capturable and isinstance(lr, Tensor)
    for b, d in foreach_batches(t, hp):
        torch._foreach_mul_(b.square_avg, alpha)
        torch._foreach_addcmul_(b.square_avg, d, d, value=1 - alpha)
        if hp.centered:
            torch._foreach_lerp_(b.grad_avg, d, 1 - alpha)
            rms = list(torch._foreach_addcmul(b.square_avg, b.grad_avg, b.grad_avg, value=-1))
            torch._foreach_sqrt_(rms)
        else:
            rms = list(torch._foreach_sqrt(b.square_avg))
        torch._foreach_add_(rms, hp.eps)
        if hp.momentum > 0:
            torch._foreach_mul_(b.momentum_buffer, hp.momentum)
            torch._foreach_addcdiv_(b.momentum_buffer, d, rms)
            if tensor_lr:
                torch._foreach_add_(b.param, torch._foreach_mul(b.momentum_buffer, -lr))
            else:
                torch._foreach_add_(b.param, b.momentum_buffer, alpha=-lr)  # type: ignore[arg-type]  # a 1-element Tensor lr is read as a number
        elif tensor_lr:
            torch._foreach_div_(rms, -lr)
            torch._foreach_addcdiv_(b.param, d, rms)
        else:
            torch._foreach_addcdiv_(b.param, d, rms, value=-lr)  # type: ignore[arg-type]  # a 1-element Tensor lr is read as a number


def _c_args(t: RMSpropTensors, hp: RMSpropHP) -> CArgs:
    """The C kernel's scalars (1 - alpha formed here, in double precision)."""
    opts = cpu_fused.RMSpropOpts(
        lr=plain_value(hp.lr),
        alpha=hp.alpha,
        w=1 - hp.alpha,
        eps=hp.eps,
        wd=hp.weight_decay,
        momentum=hp.momentum,
        maximize=hp.maximize,
    )
    return CArgs(opts)
