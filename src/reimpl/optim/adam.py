"""Adam (Kingma & Ba, 2015) and AdamW (Loshchilov & Hutter, 2019).

Adam keeps two exponential moving averages per coordinate, of the gradient and of its
square, and steps by their ratio: a step size that adapts to each coordinate's recent
gradient scale and is roughly invariant to rescaling the loss. AMSGrad (Reddi et al.,
2018) divides by the running maximum of the second moment instead, so the effective step
never grows. AdamW decouples weight decay from the adaptive step (see
:func:`reimpl.optim._common.grad_with_decay`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from reimpl.kernels import cpu_fused
from reimpl.optim._checks import check_adam_family, check_tensor_hparam
from reimpl.optim._common import (
    TensorList,
    begin_step,
    choose_path,
    foreach_batches,
    foreach_ready,
    plain_value,
    squeeze_scalar,
    stack_if_compiling,
)
from reimpl.optim._fused import CArgs, Forms
from reimpl.optim.optimizer import ParamsT, ReimplOptimizer

__all__ = ["Adam", "AdamW"]


class AdamTensors(NamedTuple):
    """The tensor lists an update takes, one per role (the state keys)."""

    param: TensorList
    grad: TensorList
    exp_avg: TensorList
    exp_avg_sq: TensorList
    max_exp_avg_sq: TensorList
    step: TensorList


class AdamHP(NamedTuple):
    lr: float | Tensor
    beta1: float | Tensor
    beta2: float | Tensor
    eps: float
    weight_decay: float
    amsgrad: bool
    maximize: bool
    capturable: bool
    differentiable: bool
    decoupled_weight_decay: bool


class Adam(ReimplOptimizer, torch.optim.Adam):
    r"""Adam, optionally AMSGrad, optionally with decoupled weight decay (= AdamW).

    For each parameter :math:`\theta` with gradient :math:`g_t` at step :math:`t`
    (:math:`g_t \leftarrow -g_t` when ``maximize``), learning rate :math:`\gamma`,
    weight decay :math:`\lambda`:

    .. math::
        \theta_{t-1} &\leftarrow (1 - \gamma\lambda)\,\theta_{t-1}
            \quad\text{decoupled (AdamW), or else}\quad g_t \leftarrow g_t + \lambda\theta_{t-1} \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t
            \quad\text{(first moment, } m_0 = 0\text{)} \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2
            \quad\text{(second moment, } v_0 = 0\text{)} \\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \text{ if amsgrad, else } v_t \\
        \theta_t &= \theta_{t-1} - \gamma\, \frac{m_t / (1 - \beta_1^t)}
            {\sqrt{\hat v_t / (1 - \beta_2^t)} + \epsilon}

    The divisions by :math:`1 - \beta^t` remove the bias of the zero-started moving
    averages. State keys: ``step``, ``exp_avg`` (:math:`m`), ``exp_avg_sq``
    (:math:`v`), ``max_exp_avg_sq`` (:math:`\hat v`, amsgrad only).

    Args: as :class:`torch.optim.Adam` — ``lr`` (float or one-element Tensor),
    ``betas`` (two floats or two one-element Tensors), ``eps``, ``weight_decay``,
    ``amsgrad``, and keyword-only ``foreach``, ``maximize``, ``capturable``,
    ``differentiable``, ``fused``, ``decoupled_weight_decay``.
    """

    _Tensors = AdamTensors
    _HP = AdamHP
    _group_defaults = (
        ("amsgrad", False),
        ("capturable", False),
        ("decoupled_weight_decay", False),
        ("fused", None),
    )

    def _forms(self) -> Forms:
        return Forms(_single_tensor_adam, _multi_tensor_adam, _c_args, "adam")

    def __init__(
        self, params: ParamsT, lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 0, amsgrad: bool = False, *, foreach: bool | None = None,
        maximize: bool = False, capturable: bool = False, differentiable: bool = False,
        fused: bool | None = None, decoupled_weight_decay: bool = False,
    ) -> None:  # fmt: skip
        check_tensor_hparam("lr", lr, foreach=foreach, capturable=capturable)
        check_adam_family(lr, eps, betas, weight_decay)
        b1, b2 = betas
        if not (
            (isinstance(b1, float) and isinstance(b2, float))
            or (isinstance(b1, Tensor) and isinstance(b2, Tensor))
        ):
            raise ValueError("betas must be two floats or two Tensors, not a mix")
        for i, beta in enumerate(betas):
            check_tensor_hparam(f"betas[{i}]", beta, foreach=foreach, capturable=capturable)
        defaults = {
            "lr": lr, "betas": (squeeze_scalar(b1), squeeze_scalar(b2)), "eps": eps,
            "weight_decay": weight_decay, "amsgrad": amsgrad, "maximize": maximize,
            "foreach": foreach, "capturable": capturable, "differentiable": differentiable,
            "fused": fused, "decoupled_weight_decay": decoupled_weight_decay,
        }  # fmt: skip
        self._setup(params, defaults)

    def _keeps(self, group: dict[str, Any], key: str) -> bool:
        return key != "max_exp_avg_sq" or group["amsgrad"]

    def _init_group(self, group: dict[str, Any], *lists: list[Any]) -> tuple[bool, bool]:
        flags = ReimplOptimizer._init_group(self, group, *lists)
        if group["differentiable"] and any(getattr(s, "requires_grad", 0) for s in lists[-1]):
            raise RuntimeError("differentiable=True does not support a step that requires grad")
        tensor_lr = lists[0] and group["foreach"] and torch.is_tensor(group["lr"])
        if tensor_lr and not group["capturable"]:
            raise RuntimeError(
                "lr given as a Tensor needs capturable=True when foreach=True "
                "(pass a float, or set capturable=True, or foreach=False)"
            )
        return flags

    def _path(self, group: dict[str, Any], params: TensorList) -> str:
        # a Tensor lr without capturable keeps the default on the per-tensor loop
        return choose_path(
            params,
            foreach=group["foreach"],
            fused=group["fused"],
            differentiable=group["differentiable"],
            tensor_lr_needs_loop=isinstance(group["lr"], Tensor) and not group["capturable"],
        )


class AdamW(Adam, torch.optim.AdamW):
    r"""AdamW: :class:`Adam` with decoupled weight decay (default ``weight_decay=1e-2``).

    The decay shrinks the weights directly instead of entering the gradient, so it is not
    rescaled by the adaptive denominator:

    .. math::
        \theta_{t-1} &\leftarrow (1 - \gamma\lambda)\,\theta_{t-1} \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2 \\
        \theta_t &= \theta_{t-1} - \gamma\, \frac{m_t / (1 - \beta_1^t)}
            {\sqrt{\hat v_t / (1 - \beta_2^t)} + \epsilon}

    with :math:`\hat v_t` as in :class:`Adam` (running max of :math:`v` for amsgrad).

    Args: as :class:`torch.optim.AdamW`.
    """

    def __init__(
        self, params: ParamsT, lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
        foreach: bool | None = None, capturable: bool = False, differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:  # fmt: skip
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=True,
        )  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True


def _single_tensor_adam(t: AdamTensors, hp: AdamHP) -> None:
    """Per-tensor loop: both moments, then the bias-corrected step."""
    params, _, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = t
    lr, beta1, beta2, eps = hp.lr, hp.beta1, hp.beta2, hp.eps
    on_tensor = hp.capturable or hp.differentiable  # no host sync; autograd can follow
    for i, param in enumerate(params):
        grad = begin_step(t, i, hp)
        m, v = exp_avgs[i], exp_avg_sqs[i]
        v_max = max_exp_avg_sqs[i] if hp.amsgrad else None
        if torch.is_complex(param):
            grad, m, v, param = (torch.view_as_real(x) for x in (grad, m, v, param))
            v_max = None if v_max is None else torch.view_as_real(v_max)

        # lerp_ takes a Tensor weight only in the tensor's own dtype and device
        b1 = beta1.to(param) if isinstance(beta1, Tensor) else beta1
        m.lerp_(grad, 1 - b1)
        if hp.differentiable and _learnable(beta2):
            v.lerp_(torch.square(grad), weight=1 - beta2)  # same value; keeps beta2's graph
        else:
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # type: ignore[arg-type]
        if v_max is not None:
            if hp.differentiable:  # out of place: autograd keeps the previous maximum
                v_max.copy_(torch.maximum(v_max.clone(), v))
            else:
                torch.maximum(v_max, v, out=v_max)
            v = v_max

        n = steps[i] if on_tensor else plain_value(steps[i])
        bc1 = 1 - beta1 ** (n.clone() if _learnable(beta1) and hp.differentiable else n)
        bc2 = 1 - beta2 ** (n.clone() if _learnable(beta2) and hp.differentiable else n)
        if on_tensor:
            # param += m / denom, denom = -(sqrt(v / bc2) + eps) / step_size: folded so the
            # one-element step size needs no extra pass over the param-sized tensors
            neg_step = (lr / bc1).neg()
            denom = (v.sqrt() / (bc2.sqrt() * neg_step)).add_(eps / neg_step)
            param.addcdiv_(m.clone() if hp.differentiable else m, denom)
        else:
            denom = (v.sqrt() / bc2**0.5).add_(eps)
            param.addcdiv_(m, denom, value=-(lr / bc1))  # type: ignore[arg-type]


def _learnable(x: Any) -> bool:
    return isinstance(x, Tensor) and x.requires_grad


def _multi_tensor_adam(t: AdamTensors, hp: AdamHP) -> None:
    """``torch._foreach_*`` per (device, dtype) batch; capturable: corrections on device."""
    if not foreach_ready(t, hp):
        return
    lr, beta1, beta2, eps = hp.lr, hp.beta1, hp.beta2, hp.eps
    for name, value in (("lr", lr), ("beta1", beta1), ("beta2", beta2)):
        if isinstance(value, Tensor):
            if not hp.capturable:
                err = RuntimeError if name == "lr" else ValueError
                raise err(f"{name} given as a Tensor needs capturable=True when foreach=True")
            if value.numel() != 1:
                raise ValueError(f"{name} given as a Tensor must have exactly one element")
    for b, d in foreach_batches(t, hp):
        b1 = beta1
        if isinstance(beta1, Tensor) and beta1.device.type != "cpu":
            b1 = beta1.to(device=b.param[0].device, non_blocking=True)
        torch._foreach_lerp_(b.exp_avg, d, 1 - b1)  # type: ignore[arg-type]
        torch._foreach_mul_(b.exp_avg_sq, beta2)
        if isinstance(beta2, Tensor):
            # _foreach_addcmul_ takes only a Python number as value: scale first
            torch._foreach_addcmul_(b.exp_avg_sq, torch._foreach_mul(d, 1 - beta2), d, 1.0)
        else:
            torch._foreach_addcmul_(b.exp_avg_sq, d, d, 1 - beta2)
        del d
        if hp.amsgrad:
            torch._foreach_maximum_(b.max_exp_avg_sq, b.exp_avg_sq)
        denom = list(torch._foreach_sqrt(b.max_exp_avg_sq if hp.amsgrad else b.exp_avg_sq))

        if hp.capturable:
            # on device: bc1 becomes -lr / (1 - beta1^t), bc2 sqrt(1 - beta2^t)
            bc1 = list(torch._foreach_pow(beta1, b.step))  # type: ignore[arg-type]
            bc2 = list(torch._foreach_pow(beta2, b.step))  # type: ignore[arg-type]
            torch._foreach_sub_(bc1, 1)
            torch._foreach_sub_(bc2, 1)
            torch._foreach_neg_(bc2)
            torch._foreach_div_(bc1, lr)
            torch._foreach_reciprocal_(bc1)
            torch._foreach_sqrt_(bc2)
            torch._foreach_div_(denom, bc2)
            torch._foreach_add_(denom, eps)
            torch._foreach_div_(denom, bc1)
            torch._foreach_addcdiv_(b.param, b.exp_avg, denom)
        else:
            ts = [plain_value(s) for s in b.step]
            neg_step_sizes = stack_if_compiling([(lr / (1 - beta1**n)) * -1 for n in ts])
            torch._foreach_div_(denom, [(1 - beta2**n) ** 0.5 for n in ts])
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(b.param, b.exp_avg, denom, neg_step_sizes)


def _c_args(t: AdamTensors, hp: AdamHP) -> CArgs:
    """The C kernel's scalars: 1 - beta formed here in double precision, and per tensor
    the step size lr / (1 - beta1^t) and sqrt(1 - beta2^t)."""
    lr, beta1, beta2 = plain_value(hp.lr), plain_value(hp.beta1), plain_value(hp.beta2)
    ts = [plain_value(s) for s in t.step]
    opts = cpu_fused.AdamOpts(
        w1=1 - beta1,
        b2=beta2,
        w2=1 - beta2,
        eps=hp.eps,
        wd=hp.weight_decay,
        shrink=1 - lr * hp.weight_decay,
        maximize=hp.maximize,
        decoupled=hp.decoupled_weight_decay,
        amsgrad=hp.amsgrad,
    )
    return CArgs(opts, [[lr / (1 - beta1**n) for n in ts], [(1 - beta2**n) ** 0.5 for n in ts]])
