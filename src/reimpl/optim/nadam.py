"""NAdam (Dozat, 2016, "Incorporating Nesterov Momentum into Adam").

Nesterov's accelerated gradient evaluates the momentum step at the point the momentum is
about to carry the parameters to, which corrects the step before it overshoots. Dozat
folds that look-ahead into Adam: the update mixes the *next* step's share of the first
moment with the current gradient's share, each with its own bias correction. The
momentum coefficient itself warms up over the first steps (``momentum_decay``), so the
early, noisy moments weigh less. With ``decoupled_weight_decay`` the decay shrinks the
weights directly instead of entering the moments (NAdamW, as AdamW: Loshchilov & Hutter,
2019, "Decoupled Weight Decay Regularization"; see
:func:`reimpl.optim._common.grad_with_decay`).
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
    stack_if_compiling,
)
from reimpl.optim._fused import CArgs, Forms, adam_family_opts
from reimpl.optim.optimizer import ParamsT, ReimplOptimizer

__all__ = ["NAdam"]


class NAdamTensors(NamedTuple):
    """The tensor lists an update takes, one per role (the state keys)."""

    param: TensorList
    grad: TensorList
    exp_avg: TensorList
    exp_avg_sq: TensorList
    mu_product: TensorList
    step: TensorList


class NAdamHP(NamedTuple):
    lr: float | Tensor
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    momentum_decay: float
    decoupled_weight_decay: bool
    maximize: bool
    capturable: bool
    differentiable: bool
    has_complex: bool


class NAdam(ReimplOptimizer, torch.optim.NAdam):
    r"""NAdam: Adam with Nesterov momentum, optionally with decoupled weight decay (NAdamW).

    For each parameter :math:`\theta` with gradient :math:`g_t` at step :math:`t`
    (:math:`g_t \leftarrow -g_t` when ``maximize``), learning rate :math:`\gamma`,
    weight decay :math:`\lambda`, momentum decay :math:`\psi`:

    .. math::
        \theta_{t-1} &\leftarrow (1 - \gamma\lambda)\,\theta_{t-1}
            \quad\text{decoupled, or else}\quad g_t \leftarrow g_t + \lambda\theta_{t-1} \\
        \mu_t &= \beta_1 \big(1 - \tfrac12\, 0.96^{t\psi}\big), \qquad
            \Pi_t = \prod_{i=1}^{t} \mu_i
            \quad\text{(momentum warm-up and its running product)} \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \qquad
            v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2
            \quad (m_0 = v_0 = 0) \\
        d_t &= \sqrt{v_t / (1 - \beta_2^t)} + \epsilon \\
        \theta_t &= \theta_{t-1}
            - \gamma\, \frac{1 - \mu_t}{1 - \Pi_t}\, \frac{g_t}{d_t}
            - \gamma\, \frac{\mu_{t+1}}{1 - \Pi_t\, \mu_{t+1}}\, \frac{m_t}{d_t}

    The last line is the Nesterov look-ahead: the gradient's share of this step plus the
    first moment's share of the next, each divided by its own bias correction. State keys:
    ``step``, ``mu_product`` (:math:`\Pi_t`, a one-element tensor like ``step``),
    ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`).

    Args: as :class:`torch.optim.NAdam` — ``lr`` (float or one-element Tensor),
    ``betas``, ``eps``, ``weight_decay``, ``momentum_decay``, ``decoupled_weight_decay``,
    and keyword-only ``foreach``, ``maximize``, ``capturable``, ``differentiable`` — plus
    ``fused`` (last), which torch's NAdam lacks:
    one pass over memory per tensor (:mod:`reimpl.optim._fused`).
    """

    _Tensors = NAdamTensors
    _HP = NAdamHP
    _group_defaults = (("capturable", False), ("decoupled_weight_decay", False))

    def _forms(self) -> Forms:
        return Forms(
            _single_tensor_nadam, _multi_tensor_nadam, _c_args, "nadam", ("step", "mu_product")
        )

    def __init__(
        self, params: ParamsT, lr: float | Tensor = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8, weight_decay: float = 0, momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False, *, foreach: bool | None = None,
        maximize: bool = False, capturable: bool = False, differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:  # fmt: skip
        check_adam_family(lr, eps, betas, weight_decay, momentum_decay=momentum_decay)
        defaults = {
            "lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
            "momentum_decay": momentum_decay, "decoupled_weight_decay": decoupled_weight_decay,
            "maximize": maximize, "foreach": foreach, "capturable": capturable,
            "differentiable": differentiable,
        }  # fmt: skip
        self._setup(params, defaults, fused_beyond_torch=fused)

    def _new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        # mu_product is a one-element running product, kept where and as the step is
        step = self._new_step(p, group)
        return {
            "step": step,
            "mu_product": torch.ones_like(step),
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
        }

    def _init_group(self, group: dict[str, Any], *lists: list[Any]) -> tuple[bool, bool]:
        flags = ReimplOptimizer._init_group(self, group, *lists)
        for i, mp in enumerate(lists[self._Tensors._fields.index("mu_product")]):
            if not isinstance(mp, Tensor):
                raise RuntimeError(
                    f"state 'mu_product' of parameter {i} is a {type(mp).__name__}; it must "
                    "be a one-element tensor (load checkpoints with load_state_dict)"
                )
        return flags


def _mu(beta1: Any, step: Any, momentum_decay: float) -> Any:
    """The warmed-up momentum coefficient of step ``step`` (a number or a tensor)."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))


def _single_tensor_nadam(t: NAdamTensors, hp: NAdamHP) -> None:
    """Per-tensor loop: the warmed-up momentum schedule, then the Nesterov step."""
    params, grads, exp_avgs, exp_avg_sqs, mu_products, steps = t
    lr, beta1, beta2, eps = hp.lr, hp.beta1, hp.beta2, hp.eps
    for i, param in enumerate(params):
        grad, m, v, mu_product = grads[i], exp_avgs[i], exp_avg_sqs[i], mu_products[i]
        if torch.is_complex(param):
            param, grad, m, v = (torch.view_as_real(x) for x in (param, grad, m, v))
        if hp.capturable:
            check_capturable_devices([param, param], [steps[i], mu_product])
        steps[i] += 1
        # capturable: the counter stays a tensor on the device (no host sync)
        n = steps[i] if hp.capturable else plain_value(steps[i])
        bc2 = 1 - beta2**n
        grad = grad_with_decay(grad, param, hp)
        mu, mu_next = _mu(beta1, n, hp.momentum_decay), _mu(beta1, n + 1, hp.momentum_decay)
        mu_product *= mu

        m.lerp_(grad, 1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = v.div(bc2).sqrt()
        if hp.differentiable or hp.capturable:
            # the step sizes multiply the tensors (not addcdiv's number ``value``), so
            # autograd follows them and nothing is read back to the host
            denom = denom.add(eps)
            mu_product_next = mu_product * mu_next
            param.addcdiv_(grad * (-lr * (1.0 - mu) / (1.0 - mu_product)), denom)
            param.addcdiv_(m * (-lr * mu_next / (1.0 - mu_product_next)), denom)
        else:
            prod = plain_value(mu_product)
            denom.add_(eps)
            param.addcdiv_(grad, denom, value=-lr * (1.0 - mu) / (1.0 - prod))
            param.addcdiv_(m, denom, value=(-lr * mu_next) / (1.0 - prod * mu_next))


def _multi_tensor_nadam(t: NAdamTensors, hp: NAdamHP) -> None:
    """``torch._foreach_*`` per (device, dtype) batch, the schedule per tensor."""
    if not foreach_ready(t, hp):
        return
    if hp.capturable:  # the running product lives with the counters
        check_capturable_devices(t.param, t.mu_product)
    lr, beta1, beta2, psi = hp.lr, hp.beta1, hp.beta2, hp.momentum_decay
    for b, d in foreach_batches(t, hp, scalars=("step", "mu_product")):
        torch._foreach_lerp_(b.exp_avg, d, 1 - beta1)
        torch._foreach_mul_(b.exp_avg_sq, beta2)
        torch._foreach_addcmul_(b.exp_avg_sq, d, d, 1 - beta2)
        denom = list(torch._foreach_sqrt(b.exp_avg_sq))

        mus: list[Any]
        mu_nexts: list[Any]
        bc2_sqrt: list[Any]
        if hp.capturable:
            # mu_t and mu_{t+1} = beta1 * (1 - 0.5 * 0.96^(t psi)), on the device
            exponent = list(torch._foreach_mul(b.step, psi))
            mus = list(torch._foreach_pow(0.96, exponent))
            torch._foreach_add_(exponent, psi)
            mu_nexts = list(torch._foreach_pow(0.96, exponent))
            del exponent
            for mu_list in (mus, mu_nexts):
                torch._foreach_mul_(mu_list, -0.5)
                torch._foreach_add_(mu_list, 1.0)
                torch._foreach_mul_(mu_list, beta1)
            bc2_sqrt = list(torch._foreach_pow(beta2, b.step))  # sqrt(1 - beta2^t)
            torch._foreach_sub_(bc2_sqrt, 1.0)
            torch._foreach_neg_(bc2_sqrt)
            torch._foreach_sqrt_(bc2_sqrt)
        else:
            ts = [plain_value(s) for s in b.step]
            bc2_sqrt = [(1 - beta2**n) ** 0.5 for n in ts]
            mus = [_mu(beta1, n, psi) for n in ts]
            mu_nexts = [_mu(beta1, n + 1, psi) for n in ts]
        torch._foreach_mul_(b.mu_product, mus)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, hp.eps)

        if hp.capturable:
            # gradient's step size: -lr (1 - mu_t) / (1 - prod), built in mus
            torch._foreach_sub_(mus, 1.0)
            torch._foreach_mul_(mus, lr)
            one_minus = list(torch._foreach_sub(b.mu_product, 1.0))
            torch._foreach_neg_(one_minus)
            torch._foreach_div_(mus, one_minus)
            # first moment's: -lr mu_{t+1} / (1 - prod mu_{t+1}), built in mu_nexts
            prod_next = list(torch._foreach_mul(b.mu_product, mu_nexts))
            torch._foreach_mul_(mu_nexts, lr)
            torch._foreach_sub_(prod_next, 1.0)  # = -(1 - prod mu_{t+1}): the sign we need
            torch._foreach_div_(mu_nexts, prod_next)
            numer = list(torch._foreach_mul(mus, d))
            torch._foreach_addcmul_(numer, mu_nexts, b.exp_avg)
            torch._foreach_addcdiv_(b.param, numer, denom)
        else:
            lr_, prods = plain_value(lr), [plain_value(p) for p in b.mu_product]
            size_g = [(lr_ * (1.0 - mu) / (1.0 - p)) * -1 for p, mu in zip(prods, mus, strict=True)]
            size_m = [
                (lr_ * mn / (1.0 - p * mn)) * -1 for p, mn in zip(prods, mu_nexts, strict=True)
            ]
            torch._foreach_addcdiv_(b.param, d, denom, stack_if_compiling(size_g))
            torch._foreach_addcdiv_(b.param, b.exp_avg, denom, stack_if_compiling(size_m))


def _c_args(t: NAdamTensors, hp: NAdamHP) -> CArgs:
    """The C kernel's scalars, and per tensor the two step sizes (the gradient's and the
    momentum's) and 1 - beta2^t. The running product of mu advances here, on its tensor,
    so it rounds as on the other paths."""
    lr = plain_value(hp.lr)
    cg, cm, bc2 = [], [], []
    for s, mu_product in zip(t.step, t.mu_product, strict=True):
        n = plain_value(s)
        mu, mu_next = _mu(hp.beta1, n, hp.momentum_decay), _mu(hp.beta1, n + 1, hp.momentum_decay)
        prod = plain_value(mu_product.mul_(mu))
        cg.append(lr * (1.0 - mu) / (1.0 - prod))
        cm.append(lr * mu_next / (1.0 - prod * mu_next))
        bc2.append(1 - hp.beta2**n)
    return CArgs(adam_family_opts(hp, lr), [cg, cm, bc2])
