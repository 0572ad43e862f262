"""ASGD: averaged stochastic gradient descent (Polyak & Juditsky, "Acceleration of
Stochastic Approximation by Averaging", SIAM J. Control Optim. 30(4), 1992).

Plain SGD with a slowly decaying step size converges, but its iterates keep bouncing
around the optimum with the noise of the gradients. Polyak and Juditsky showed that the
running *average* of the iterates does far better: with steps that decay more slowly than
1/t, the average converges at the optimal rate (the Cramér-Rao bound of the problem), as
if the noise's curvature were known. So the rule takes ordinary SGD steps on the params,
with a step size eta_t = lr / (1 + lambd * lr * t)^alpha, and keeps the average ``ax`` of
the iterates beside them. Averaging starts at step ``t0``; before that ``ax`` simply follows
the params (the averaging weight mu_t = 1 / max(1, t - t0) is 1). ``lambd`` also shrinks the
params at each step, by a factor 1 - lambd * eta_t.
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
    grad_with_decay,
    new_step,
    plain_value,
    squeeze_scalar,
)
from reimpl.optim._fused import CArgs, Forms
from reimpl.optim.optimizer import ParamsT, ReimplOptimizer

__all__ = ["ASGD"]


class ASGDTensors(NamedTuple):
    """The tensor lists an update takes, one per role (the state keys)."""

    param: TensorList
    grad: TensorList
    ax: TensorList
    mu: TensorList
    eta: TensorList
    step: TensorList


class ASGDHP(NamedTuple):
    lr: float | Tensor
    lambd: float
    alpha: float
    t0: float
    weight_decay: float
    maximize: bool
    differentiable: bool
    capturable: bool
    has_complex: bool


class ASGD(ReimplOptimizer, torch.optim.ASGD):
    r"""ASGD: SGD with a decaying step size, and the running average of its iterates.

    For each parameter :math:`\theta` with gradient :math:`g_t` at step :math:`t`
    (:math:`g_t \leftarrow -g_t` when ``maximize``), learning rate :math:`\gamma`,
    decay :math:`\lambda` (``lambd``), power :math:`\alpha`, averaging start :math:`t_0`,
    weight decay :math:`w`, and :math:`\eta_0 = \gamma`, :math:`\mu_0 = 1`:

    .. math::
        g_t &\leftarrow g_t + w\,\theta_{t-1} \\
        \theta_t &= (1 - \lambda\eta_{t-1})\,\theta_{t-1} - \eta_{t-1}\, g_t \\
        \bar\theta_t &= \bar\theta_{t-1} + \mu_{t-1}\,(\theta_t - \bar\theta_{t-1})
            \quad\text{(the average, } \bar\theta_0 = 0\text{)} \\
        \eta_t &= \frac{\gamma}{(1 + \lambda\gamma t)^{\alpha}}, \qquad
            \mu_t = \frac{1}{\max(1,\ t - t_0)}

    With :math:`\mu = 1` (every step up to :math:`t_0 + 1`) the average is a copy of the
    params. Complex params are updated as pairs of reals. State keys: ``step``, ``eta``
    (:math:`\eta`) and ``mu`` (:math:`\mu`), one-element tensors on the param's device,
    and ``ax`` (:math:`\bar\theta`, the averaged params).

    Args: as :class:`torch.optim.ASGD` — ``lr`` (float or one-element Tensor),
    ``lambd``, ``alpha``, ``t0``, ``weight_decay``, ``foreach``, ``maximize``,
    ``differentiable``, ``capturable`` — plus ``fused`` (keyword-only, last), which
    torch's ASGD lacks: one pass over memory per tensor (:mod:`reimpl.optim._fused`).
    """

    _Tensors = ASGDTensors
    _HP = ASGDHP
    _group_defaults = (("capturable", False),)

    def _forms(self) -> Forms:
        return Forms(
            _single_tensor_asgd, _multi_tensor_asgd, _c_args, "asgd", ("step", "eta", "mu")
        )

    def __init__(
        self, params: ParamsT, lr: float | Tensor = 1e-2, lambd: float = 1e-4,
        alpha: float = 0.75, t0: float = 1e6, weight_decay: float = 0,
        foreach: bool | None = None, maximize: bool = False, differentiable: bool = False,
        capturable: bool = False, *, fused: bool | None = None,
    ) -> None:  # fmt: skip
        check_hparams(lr=lr, weight_decay=weight_decay)
        defaults = {
            "lr": lr, "lambd": lambd, "alpha": alpha, "t0": t0, "weight_decay": weight_decay,
            "foreach": foreach, "maximize": maximize, "differentiable": differentiable,
            "capturable": capturable,
        }  # fmt: skip
        self._setup(params, defaults, fused_beyond_torch=fused)

    def _new_step(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        # torch keeps ASGD's counters on the param's device on every path
        return new_step(p, on_param_device=True)

    def _new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        step = self._new_step(p, group)
        lr = squeeze_scalar(group["lr"])
        return {
            "step": step,
            "eta": torch.empty_like(step).fill_(lr.detach() if isinstance(lr, Tensor) else lr),
            "mu": torch.ones_like(step),
            "ax": torch.zeros_like(p, memory_format=torch.preserve_format),
        }


def _single_tensor_asgd(t: ASGDTensors, hp: ASGDHP) -> None:
    """Per-tensor loop: the SGD step with this step's eta, the average, the next schedule."""
    params, grads, axs, mus, etas, steps = t
    lr, lambd, alpha, t0 = hp.lr, hp.lambd, hp.alpha, hp.t0
    for i, param in enumerate(params):
        grad, ax, mu, eta, step = grads[i], axs[i], mus[i], etas[i], steps[i]
        if hp.capturable:
            check_capturable_devices([param] * 3, [step, eta, mu])
        if torch.is_complex(param):  # real views before the decay, as torch adds it
            param, grad, ax = (torch.view_as_real(x) for x in (param, grad, ax))
        step += 1
        grad = grad_with_decay(grad, param, hp)

        if hp.capturable:  # eta stays a tensor on the device (no host sync)
            param.mul_(1 - lambd * eta)
            param.addcmul_(grad, eta, value=-1)
        else:
            eta_t = plain_value(eta)
            param.mul_(1 - lambd * eta_t)
            param.add_(grad, alpha=-eta_t)

        if hp.capturable or plain_value(mu) != 1:
            ax.add_(param.sub(ax).mul_(mu))
        else:  # mu = 1: the average is the iterate itself (exactly, not by rounding)
            ax.copy_(param)

        if hp.capturable:
            eta.copy_(lr / ((1 + lambd * lr * step) ** alpha))
            mu.copy_(1 / torch.maximum(step - t0, torch.ones_like(step)))
        else:
            n = plain_value(step)
            # through a default-dtype tensor, as torch rounds it (eta may be float64 after
            # a checkpoint cast it to a float64 param's dtype)
            eta.copy_(torch.as_tensor(lr / ((1 + lambd * lr * n) ** alpha)))
            mu.copy_(torch.as_tensor(1 / max(1, n - t0)))


def _multi_tensor_asgd(t: ASGDTensors, hp: ASGDHP) -> None:
    """``torch._foreach_*`` per (device, dtype) batch: the decay folded into the gradient,
    ``theta -= eta * (g + lambd * theta)``, and the average always by its weight mu."""
    if not foreach_ready(t, hp):
        return
    if hp.capturable:  # eta and mu live with the counters
        check_capturable_devices(t.param, t.eta)
        check_capturable_devices(t.param, t.mu)
    lr, lambd, alpha, t0 = hp.lr, hp.lambd, hp.alpha, hp.t0
    for b, d in foreach_batches(t, hp, scalars=("step", "eta", "mu")):
        # g + lambd * theta, in place where d is already our own copy (never into .grad)
        if d is b.grad:
            d = list(torch._foreach_add(d, b.param, alpha=lambd))
        else:
            torch._foreach_add_(d, b.param, alpha=lambd)
        torch._foreach_addcmul_(b.param, d, b.eta, value=-1)
        del d
        diff = torch._foreach_sub(b.param, b.ax)
        torch._foreach_addcmul_(b.ax, diff, b.mu)
        del diff

        new_mus: Any
        new_etas: Any
        if hp.capturable:
            # mu = 1 / max(t - t0, 1) and eta = lr / (1 + lambd lr t)^alpha, on the device
            new_mus = torch._foreach_sub(b.step, t0)
            torch._foreach_maximum_(new_mus, 1.0)
            torch._foreach_reciprocal_(new_mus)
            new_etas = torch._foreach_mul(b.step, lambd)
            torch._foreach_mul_(new_etas, lr)
            torch._foreach_add_(new_etas, 1)
            torch._foreach_pow_(new_etas, alpha)
            torch._foreach_reciprocal_(new_etas)
            torch._foreach_mul_(new_etas, lr)
        else:
            device = b.param[0].device
            # eta in the counters' tensor arithmetic (torch's multi-tensor order), mu in
            # Python's
            new_etas = [
                torch.as_tensor(lr / ((1 + lambd * lr * s) ** alpha), device=device) for s in b.step
            ]
            new_mus = [
                torch.as_tensor(1 / max(1, plain_value(s) - t0), device=device) for s in b.step
            ]
        torch._foreach_copy_(b.eta, new_etas)
        torch._foreach_copy_(b.mu, new_mus)


def _c_args(t: ASGDTensors, hp: ASGDHP) -> CArgs:
    """The C kernel's scalars, and per tensor this step's eta and mu; then eta and mu move
    on for the next step, as the multi-tensor form moves them (its rounding, its order)."""
    per = [[plain_value(e) for e in t.eta], [plain_value(m) for m in t.mu]]
    lr = plain_value(hp.lr)
    etas = [torch.as_tensor(lr / ((1 + hp.lambd * lr * s) ** hp.alpha)) for s in t.step]
    mus = [torch.as_tensor(1 / max(1, plain_value(s) - hp.t0)) for s in t.step]
    torch._foreach_copy_(t.eta, etas)
    torch._foreach_copy_(t.mu, mus)
    return CArgs(cpu_fused.ASGDOpts(lambd=hp.lambd, wd=hp.weight_decay, maximize=hp.maximize), per)
