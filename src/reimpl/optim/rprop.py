"""Rprop (Riedmiller & Braun, 1993, "A Direct Adaptive Method for Faster Backpropagation
Learning: The RPROP Algorithm", IEEE International Conference on Neural Networks).

Gradient descent moves each weight by an amount proportional to its partial derivative,
whose size says little about how far the minimum is: plateaus crawl, steep valleys
overshoot. Rprop ("resilient propagation") keeps only the *sign* of the derivative and
learns a separate step size per weight from how that sign behaves: while it stays the
same the step grows (by ``etaplus``), when it flips the last step jumped over a minimum,
so the step shrinks (by ``etaminus``) and that weight waits one step. The step sizes stay
within ``step_sizes``; ``lr`` is only their starting value. It suits full-batch training:
with mini-batch noise the signs flip for reasons other than overshooting.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from reimpl.kernels import cpu_fused
from reimpl.optim._checks import check_hparams
from reimpl.optim._common import (
    TensorList,
    check_capturable_devices,
    foreach_batches,
    foreach_ready,
    squeeze_scalar,
)
from reimpl.optim._fused import CArgs, Forms
from reimpl.optim.optimizer import ParamsT, ReimplOptimizer

__all__ = ["Rprop"]


class RpropTensors(NamedTuple):
    """The tensor lists an update takes, one per role (the state keys)."""

    param: TensorList
    grad: TensorList
    prev: TensorList
    step_size: TensorList
    step: TensorList


class RpropHP(NamedTuple):
    etaminus: float
    etaplus: float
    step_size_min: float
    step_size_max: float
    maximize: bool
    differentiable: bool
    capturable: bool
    has_complex: bool
    #: Rprop has no weight decay: a constant 0, so the shared gradient preparation
    #: (:func:`~reimpl.optim._common.foreach_batches`: ``maximize`` only) serves it
    weight_decay: float = 0.0


class Rprop(ReimplOptimizer, torch.optim.Rprop):
    r"""Rprop: a step of learned size against the sign of each gradient coordinate.

    Per coordinate of a parameter :math:`\theta`, at step :math:`t`, from its gradient
    :math:`g_t` (negated when ``maximize``), the previous step's gradient
    :math:`g_{t-1}` (0 at the start, and 0 after a sign flip), the step size
    :math:`\Delta` (:math:`\Delta_0 = \text{lr}`), factors
    :math:`0 < \eta^- < 1 < \eta^+` and bounds :math:`[\Delta_{min}, \Delta_{max}]`:

    .. math::
        \eta_t &= \eta^+ \text{ if } g_{t-1} g_t > 0, \quad
            \eta^- \text{ if } g_{t-1} g_t < 0, \quad 1 \text{ otherwise} \\
        \Delta_t &= \operatorname{clamp}(\eta_t\, \Delta_{t-1},\,
            \Delta_{min},\, \Delta_{max}) \\
        g_t &\leftarrow 0 \quad\text{if } g_{t-1} g_t < 0
            \quad\text{(overshot: no move now, no sign to compare next time)} \\
        \theta_t &= \theta_{t-1} - \Delta_t \operatorname{sign}(g_t), \qquad
            g_{t-1} \leftarrow g_t \text{ for the next step}

    Complex params are updated as pairs of reals (both parts start at step size lr).
    State keys: ``step``, ``prev`` (:math:`g_{t-1}`), ``step_size`` (:math:`\Delta`).

    Args: as :class:`torch.optim.Rprop` — ``lr`` (float or one-element Tensor: the
    initial step size), ``etas`` (:math:`(\eta^-, \eta^+)`), ``step_sizes``
    (:math:`(\Delta_{min}, \Delta_{max})`), and keyword-only ``capturable``,
    ``foreach``, ``maximize``, ``differentiable`` — plus ``fused`` (last), which torch's
    Rprop lacks: one pass over memory per tensor (:mod:`reimpl.optim._fused`).
    """

    _Tensors = RpropTensors
    _HP = RpropHP
    _group_defaults = (("capturable", False),)

    def _forms(self) -> Forms:
        return Forms(_single_tensor_rprop, _multi_tensor_rprop, _c_args, "rprop")

    def __init__(
        self, params: ParamsT, lr: float | Tensor = 1e-2, etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50), *, capturable: bool = False,
        foreach: bool | None = None, maximize: bool = False, differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:  # fmt: skip
        check_hparams(lr=lr)
        etaminus, etaplus = etas[0], etas[1]
        if not 0.0 < etaminus < 1.0 < etaplus:
            raise ValueError(
                f"Invalid etas: ({etaminus}, {etaplus}); they must satisfy "
                "0 < etaminus < 1 < etaplus (shrink on a sign flip, grow otherwise)"
            )
        defaults = {
            "lr": lr, "etas": etas, "step_sizes": step_sizes, "foreach": foreach,
            "maximize": maximize, "differentiable": differentiable, "capturable": capturable,
        }  # fmt: skip
        self._setup(params, defaults, fused_beyond_torch=fused)

    def _new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        # every step size starts at lr (the real and imaginary parts alike), laid out
        # like the gradient it is first created with
        lr = squeeze_scalar(group["lr"])
        like = p.grad if p.grad is not None else p
        return {
            "step": self._new_step(p, group),
            "prev": torch.zeros_like(p, memory_format=torch.preserve_format),
            "step_size": torch.full_like(like, complex(lr, lr) if p.is_complex() else lr),
        }

    def _hparams(self, group: dict[str, Any], **flags: bool) -> Any:
        etaminus, etaplus = group["etas"]
        step_size_min, step_size_max = group["step_sizes"]
        named = {"etaminus": etaminus, "etaplus": etaplus}
        named |= {"step_size_min": step_size_min, "step_size_max": step_size_max}
        # "weight_decay" pinned: a stray group key of that name means nothing to Rprop
        return ReimplOptimizer._hparams(self, {**group, **named, "weight_decay": 0.0}, **flags)


def _eta(agree: Tensor, hp: RpropHP) -> Tensor:
    """The factor each step size is multiplied by, from ``agree`` = sign(g_{t-1} g_t):
    ``etaplus`` where the sign held, ``etaminus`` where it flipped, 1 where a gradient is
    zero; NaN stays NaN. Replaced in this order (a later test sees the earlier
    replacements), with ``where`` rather than masked writes: no host sync (capturable)."""
    eta = torch.where(agree > 0, hp.etaplus, agree)
    eta = torch.where(eta < 0, hp.etaminus, eta)
    return torch.where(eta == 0, 1.0, eta)


def _single_tensor_rprop(t: RpropTensors, hp: RpropHP) -> None:
    """Per-tensor loop: compare signs, adapt the step sizes, step against the sign."""
    params, grads, prevs, step_sizes, steps = t
    for i, param in enumerate(params):
        if hp.capturable:
            check_capturable_devices([param], [steps[i]])
        steps[i] += 1
        grad = -grads[i] if hp.maximize else grads[i]
        real = torch.view_as_real if torch.is_complex(param) else (lambda x: x)
        param, grad, prev, step_size = real(param), real(grad), real(prevs[i]), real(step_sizes[i])
        # differentiable: prev is overwritten below, and autograd saved it for the product
        agree = grad.mul(prev.clone() if hp.differentiable else prev).sign()
        eta = _eta(agree, hp)
        step_size.mul_(eta).clamp_(hp.step_size_min, hp.step_size_max)
        grad = torch.where(eta == hp.etaminus, 0, grad)  # a fresh tensor, never .grad
        param.addcmul_(grad.sign(), step_size, value=-1)
        prev.copy_(grad)


def _multi_tensor_rprop(t: RpropTensors, hp: RpropHP) -> None:
    """``torch._foreach_*`` per (device, dtype) batch; ``prev`` takes this step's
    gradient first and is then worked on in place (no buffer of its own)."""
    if not foreach_ready(t, hp):
        return
    for b, d in foreach_batches(t, hp):
        agrees = torch._foreach_mul(d, b.prev)
        torch._foreach_copy_(b.prev, d)
        torch._foreach_sign_(agrees)
        etas = [_eta(a, hp) for a in agrees]
        del agrees
        torch._foreach_mul_(b.step_size, etas)
        for step_size in b.step_size:
            step_size.clamp_(hp.step_size_min, hp.step_size_max)
        for prev, eta in zip(b.prev, etas, strict=True):
            prev.masked_fill_(eta == hp.etaminus, 0)
        del etas
        torch._foreach_addcmul_(b.param, torch._foreach_sign(b.prev), b.step_size, value=-1)


def _c_args(t: RpropTensors, hp: RpropHP) -> CArgs:
    """The C kernel's scalars: the step-size factors and bounds."""
    opts = cpu_fused.RpropOpts(
        etaminus=hp.etaminus, etaplus=hp.etaplus, step_min=hp.step_size_min,
        step_max=hp.step_size_max, maximize=hp.maximize,
    )  # fmt: skip
    return CArgs(opts)
