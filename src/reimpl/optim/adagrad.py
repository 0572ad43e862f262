"""AdaGrad (Duchi, Hazan & Singer, 2011): per-coordinate step sizes from the accumulated
squared gradients.

Coordinates that have seen large gradients take small steps and rarely-updated ones keep
large steps, which suits sparse features; the price is a step size that only shrinks.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from reimpl._compat import torch_at_least
from reimpl.kernels import cpu_fused
from reimpl.optim._checks import check_hparams
from reimpl.optim._common import (
    TensorList,
    add_one_to_steps,
    as_real,
    foreach_ready,
    grads_with_decay,
    group_by_device_and_dtype,
    plain_value,
)
from reimpl.optim._fused import CArgs, Forms
from reimpl.optim.optimizer import ParamsT, ReimplOptimizer

__all__ = ["Adagrad"]


class AdagradTensors(NamedTuple):
    """The tensor lists an update takes, one per role (the state keys)."""

    param: TensorList
    grad: TensorList
    sum: TensorList
    step: TensorList


class AdagradHP(NamedTuple):
    lr: float | Tensor
    lr_decay: float
    weight_decay: float
    eps: float
    maximize: bool
    differentiable: bool
    has_sparse_grad: bool
    has_complex: bool


class Adagrad(ReimplOptimizer, torch.optim.Adagrad):
    r"""AdaGrad, with an optional decay of the learning rate.

    :math:`g_t` is the gradient of parameter :math:`\theta` at step :math:`t`, negated
    first when ``maximize``; :math:`\gamma` is ``lr``:

    .. math::
        g_t &\leftarrow g_t + \lambda\,\theta_{t-1} \\
        \tilde\gamma_t &= \gamma \,/\, (1 + (t - 1)\,\eta)
            \quad\text{(lr decay } \eta\text{)} \\
        s_t &= s_{t-1} + g_t^2, \qquad s_0 = \text{initial\_accumulator\_value} \\
        \theta_t &= \theta_{t-1} - \tilde\gamma_t\, g_t / (\sqrt{s_t} + \epsilon)

    :math:`s` is the running *sum* of squared gradients (``state[p]["sum"]``), so each
    coordinate's step shrinks as its gradients accumulate. State is created for every
    param at construction (as torch does). Sparse gradients are supported (without
    weight decay): only the rows present in the gradient are updated.

    Args: as :class:`torch.optim.Adagrad` — ``lr``, ``lr_decay``, ``weight_decay``,
    ``initial_accumulator_value``, ``eps``, ``foreach``, and keyword-only ``maximize``,
    ``differentiable``, ``fused``.
    """

    _Tensors = AdagradTensors
    _HP = AdagradHP
    _group_defaults = (("fused", None),)
    _sparse_ok = True
    # torch's fused Adagrad takes GradScaler's fused protocol from 2.12 on; before, GradScaler
    # unscales the grads itself and skips the step on an overflow
    _fused_amp_scaling = torch_at_least(2, 12)

    def _forms(self) -> Forms:
        return Forms(_single_tensor_adagrad, _multi_tensor_adagrad, _c_args, "adagrad")

    def __init__(
        self, params: ParamsT, lr: float | Tensor = 1e-2, lr_decay: float = 0,
        weight_decay: float = 0, initial_accumulator_value: float = 0, eps: float = 1e-10,
        foreach: bool | None = None, *, maximize: bool = False, differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:  # fmt: skip
        check_hparams(
            lr=lr,
            lr_decay=lr_decay,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
        )
        defaults = {
            "lr": lr, "lr_decay": lr_decay, "eps": eps, "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value, "foreach": foreach,
            "maximize": maximize, "differentiable": differentiable, "fused": fused,
        }  # fmt: skip
        self._setup(params, defaults)
        # torch fills the state eagerly, from the constructor's accumulator value
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p].update(self._new_state(p, group))

    def _new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        init = self.defaults["initial_accumulator_value"]
        fill = complex(init, init) if torch.is_complex(p) else init
        return {
            "step": self._new_step(p, group),
            "sum": torch.full_like(p, fill, memory_format=torch.preserve_format),
        }

    def share_memory(self) -> None:
        """Move the ``sum`` accumulators to shared memory (for Hogwild-style training)."""
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["sum"].share_memory_()


def _step_size(hp: AdagradHP, step: Tensor) -> Any:
    """lr / (1 + (t - 1) * lr_decay): the decayed learning rate of step t."""
    return hp.lr / (1 + (plain_value(step) - 1) * hp.lr_decay)


def _single_tensor_adagrad(t: AdagradTensors, hp: AdagradHP) -> None:
    """Per-tensor loop (also the sparse-gradient path)."""
    params, grads, sums, steps = t
    for param, grad, acc, step_t in zip(params, grads, sums, steps, strict=True):
        step_t += 1
        if hp.maximize:
            grad = -grad
        if hp.weight_decay != 0:
            if grad.is_sparse:
                raise RuntimeError("Adagrad: weight_decay cannot be used with sparse gradients")
            grad = grad.add(param, alpha=hp.weight_decay)
        clr = _step_size(hp, step_t)
        if grad.is_sparse:
            # the update is non-linear in the gradient, so duplicate indices must merge first
            grad = grad.coalesce()
            idx, vals = grad._indices(), grad._values()
            acc.add_(torch.sparse_coo_tensor(idx, vals.pow(2), grad.size()))
            denom = acc.sparse_mask(grad)._values().sqrt_().add_(hp.eps)
            param.add_(torch.sparse_coo_tensor(idx, vals / denom, grad.size()), alpha=-clr)
            continue
        if torch.is_complex(param):
            param, grad, acc = (torch.view_as_real(x) for x in (param, grad, acc))
        acc.addcmul_(grad, grad, value=1)
        denom = acc.sqrt() + hp.eps if hp.differentiable else acc.sqrt().add_(hp.eps)
        param.addcdiv_(grad, denom, value=-clr)


def _multi_tensor_adagrad(t: AdagradTensors, hp: AdagradHP) -> None:
    """``torch._foreach_*`` over each (device, dtype) batch; sparse batches use the loop."""
    if not foreach_ready(t, hp, empty_first=False):
        return
    batches = group_by_device_and_dtype(list(t))
    for (b_params, b_grads, b_sums, b_steps), _ in batches.values():
        if hp.has_sparse_grad and any(g.is_sparse for g in b_grads):
            _single_tensor_adagrad(AdagradTensors(b_params, b_grads, b_sums, b_steps), hp)
            continue
        if hp.has_complex:
            as_real(b_params, b_grads, b_sums)
        own_copy = hp.maximize or hp.weight_decay != 0
        d = grads_with_decay(b_grads, b_params, hp)
        # maximize negates before the step counters move, weight decay after: no difference
        add_one_to_steps(b_steps)
        neg_step_sizes = [-_step_size(hp, s) for s in b_steps]
        torch._foreach_addcmul_(b_sums, d, d, value=1)
        denom = torch._foreach_sqrt(b_sums)
        torch._foreach_add_(denom, hp.eps)
        if own_copy:
            torch._foreach_mul_(d, neg_step_sizes)
            numer = d
        else:
            numer = list(torch._foreach_mul(d, neg_step_sizes))
        torch._foreach_addcdiv_(b_params, numer, denom)


def _c_args(t: AdagradTensors, hp: AdagradHP) -> CArgs:
    """The C kernel's scalars, and per tensor the decayed learning rate."""
    hp = hp._replace(lr=plain_value(hp.lr))
    opts = cpu_fused.AdagradOpts(wd=hp.weight_decay, eps=hp.eps, maximize=hp.maximize)
    return CArgs(opts, [[_step_size(hp, s) for s in t.step]])
