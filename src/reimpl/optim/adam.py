"""Adam and AdamW (Adam with decoupled weight decay)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from reimpl.kernels import cpu_fused
from reimpl.optim.optimizer import (
    Optimizer,
    ParamsT,
    TensorList,
    add_one_to_steps,
    amp_scaling,
    as_real,
    check_capturable_devices,
    check_fused_flags,
    check_fused_param,
    check_fused_state,
    check_fused_steps,
    check_nonnegative,
    check_steps,
    check_tensor_hparam,
    choose_path,
    found_inf_on_host,
    graph_capture_health_check,
    group_by_device_and_dtype,
    new_step,
    plain_value,
    prepare_grad,
    prepare_grads,
    run_triton,
    run_widened,
    scalar_dtype,
    squeeze_scalar,
    stack_if_compiling,
    unscale_grads_,
    use_grad_for_differentiable,
)

__all__ = ["Adam", "AdamW"]


class Adam(torch.optim.Adam):
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

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        check_tensor_hparam("lr", lr, foreach=foreach, capturable=capturable)
        check_nonnegative("learning rate", lr)
        check_nonnegative("epsilon value", eps)
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(
                    f"Invalid beta parameter at index {i}: {beta} (need 0 <= beta < 1)"
                )
        check_nonnegative("weight_decay value", weight_decay)
        b1, b2 = betas
        if not (
            (isinstance(b1, float) and isinstance(b2, float))
            or (isinstance(b1, Tensor) and isinstance(b2, Tensor))
        ):
            raise ValueError("betas must be two floats or two Tensors, not a mix")
        for i, beta in enumerate(betas):
            check_tensor_hparam(f"betas[{i}]", beta, foreach=foreach, capturable=capturable)
        defaults = {
            "lr": lr,
            "betas": (squeeze_scalar(b1), squeeze_scalar(b2)),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        Optimizer.__init__(self, params, defaults)  # the base, not the torch class we replace
        check_fused_flags(fused, foreach, differentiable)
        if fused:  # GradScaler hands the scale and found_inf to step (see amp_scaling)
            self._step_supports_amp_scaling = True

    def __setstate__(self, state: dict[str, Any]) -> None:
        Optimizer.__setstate__(self, state)
        for group in self.param_groups:
            for key, value in (
                ("amsgrad", False),
                ("maximize", False),
                ("foreach", None),
                ("capturable", False),
                ("differentiable", False),
                ("decoupled_weight_decay", False),
                ("fused", None),
            ):
                group.setdefault(key, value)
            on_dev = bool(group["capturable"] or group["fused"])
            for p in group["params"]:
                s = self.state.get(p, {})
                if s and not torch.is_tensor(s["step"]):  # checkpoints from old torch
                    s["step"] = torch.tensor(
                        float(s["step"]),
                        dtype=scalar_dtype(group["fused"]),
                        device=p.device if on_dev else None,
                    )

    def _init_group(
        self,
        group: dict[str, Any],
        params: TensorList,
        grads: TensorList,
        exp_avgs: TensorList,
        exp_avg_sqs: TensorList,
        max_exp_avg_sqs: TensorList,
        steps: TensorList,
    ) -> bool:
        has_complex = False
        for p in group["params"]:
            if p.grad is None:
                continue
            has_complex |= torch.is_complex(p)
            params.append(p)
            if p.grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients; "
                    "torch.optim.SparseAdam does"
                )
            grads.append(p.grad)
            state = self.state[p]
            if len(state) == 0:
                if group["fused"]:
                    check_fused_param(p)
                # step lives on the CPU unless capturable/fused: no kernel launch per step
                state["step"] = new_step(
                    p,
                    on_param_device=bool(group["capturable"] or group["fused"]),
                    fused=group["fused"],
                )
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            if group["amsgrad"]:
                max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            if group["differentiable"] and state["step"].requires_grad:
                raise RuntimeError("differentiable=True does not support a step that requires grad")
            if group["foreach"] and torch.is_tensor(group["lr"]) and not group["capturable"]:
                raise RuntimeError(
                    "lr given as a Tensor needs capturable=True when foreach=True "
                    "(pass a float, or set capturable=True, or foreach=False)"
                )
            steps.append(state["step"])
        return has_complex

    @use_grad_for_differentiable
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One update of every param with a gradient; ``closure`` re-evaluates the loss."""
        graph_capture_health_check(self)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: TensorList = []
            grads: TensorList = []
            exp_avgs: TensorList = []
            exp_avg_sqs: TensorList = []
            max_exp_avg_sqs: TensorList = []
            steps: TensorList = []
            has_complex = self._init_group(
                group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps
            )
            path = choose_path(
                params,
                foreach=group["foreach"],
                fused=group["fused"],
                differentiable=group["differentiable"],
                tensor_lr_needs_loop=isinstance(group["lr"], Tensor) and not group["capturable"],
            )
            check_steps(steps)
            update = {"single": _single_tensor_adam, "multi": _multi_tensor_adam}.get(
                path, _fused_adam
            )
            beta1, beta2 = group["betas"]
            update(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                max_exp_avg_sqs,
                steps,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                amsgrad=group["amsgrad"],
                maximize=group["maximize"],
                capturable=group["capturable"],
                differentiable=group["differentiable"],
                decoupled_weight_decay=group["decoupled_weight_decay"],
                has_complex=has_complex,
                **amp_scaling(self, path),
            )
        return loss


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
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True


def _single_tensor_adam(
    params: TensorList,
    grads: TensorList,
    exp_avgs: TensorList,
    exp_avg_sqs: TensorList,
    max_exp_avg_sqs: TensorList,
    steps: TensorList,
    *,
    lr: float | Tensor,
    beta1: float | Tensor,
    beta2: float | Tensor,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
    decoupled_weight_decay: bool,
    has_complex: bool,
) -> None:
    """Per-tensor loop."""
    lr, beta1, beta2 = squeeze_scalar(lr), squeeze_scalar(beta1), squeeze_scalar(beta2)
    beta1_on: dict[tuple[torch.device, torch.dtype], Tensor] = {}
    for i, param in enumerate(params):
        step_t = steps[i]
        if capturable:
            check_capturable_devices([param], [step_t])
        step_t += 1
        if weight_decay != 0 and decoupled_weight_decay:
            param.mul_(1 - lr * weight_decay)
            grad = prepare_grad(grads[i], param, maximize=maximize, weight_decay=0)
        else:
            grad = prepare_grad(grads[i], param, maximize=maximize, weight_decay=weight_decay)
        m, v = exp_avgs[i], exp_avg_sqs[i]
        is_complex = torch.is_complex(param)
        if is_complex:
            grad, m, v, param = (torch.view_as_real(x) for x in (grad, m, v, param))
        v_max = max_exp_avg_sqs[i] if amsgrad else None
        if v_max is not None and is_complex:
            v_max = torch.view_as_real(v_max)

        # a Tensor beta1 is cast once per (device, dtype) so lerp_ can take it as weight
        b1: float | Tensor = beta1
        if isinstance(beta1, Tensor):
            key = (param.device, param.dtype)
            if key not in beta1_on:
                beta1_on[key] = beta1.to(device=param.device, dtype=param.dtype, non_blocking=True)
            b1 = beta1_on[key]

        m.lerp_(grad, 1 - b1)
        if differentiable and isinstance(beta2, Tensor) and beta2.requires_grad:
            v.lerp_(torch.square(grad), weight=1 - beta2)  # same value; keeps beta2's graph
        else:
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # type: ignore[arg-type]

        if capturable or differentiable:
            # everything stays a tensor: no host sync, graph-capturable, differentiable
            t = step_t
            grads_through = differentiable and isinstance(beta1, Tensor) and beta1.requires_grad
            bc1 = 1 - beta1 ** (t.clone() if grads_through else t)
            grads_through = differentiable and isinstance(beta2, Tensor) and beta2.requires_grad
            bc2 = 1 - beta2 ** (t.clone() if grads_through else t)
            neg_step = (lr / bc1).neg()
            bc2_sqrt = bc2.sqrt()
            if v_max is not None:
                current = max_exp_avg_sqs[i].clone() if differentiable else max_exp_avg_sqs[i]
                if is_complex:
                    current = torch.view_as_real(current)
                v_max.copy_(torch.maximum(current, v))
                v = v_max
            # param += m / denom with denom = -(sqrt(v / bc2) + eps) / step_size, folded so
            # the 1-element step size needs no extra pass over the param-sized tensors
            denom = (v.sqrt() / (bc2_sqrt * neg_step)).add_(eps / neg_step)
            param.addcdiv_(m.clone() if differentiable else m, denom)
        else:
            t = plain_value(step_t)
            step_size = lr / (1 - beta1**t)
            bc2_sqrt = (1 - beta2**t) ** 0.5
            if v_max is not None:
                torch.maximum(v_max, v, out=v_max)
                v = v_max
            denom = (v.sqrt() / bc2_sqrt).add_(eps)
            param.addcdiv_(m, denom, value=-step_size)  # type: ignore[arg-type]


def _multi_tensor_adam(
    params: TensorList,
    grads: TensorList,
    exp_avgs: TensorList,
    exp_avg_sqs: TensorList,
    max_exp_avg_sqs: TensorList,
    steps: TensorList,
    *,
    lr: float | Tensor,
    beta1: float | Tensor,
    beta2: float | Tensor,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
    decoupled_weight_decay: bool,
    has_complex: bool,
) -> None:
    """``torch._foreach_*`` over each (device, dtype) batch."""
    if not params:
        return
    for name, value in (("lr", lr), ("beta1", beta1), ("beta2", beta2)):
        if isinstance(value, Tensor):
            if not capturable:
                err = RuntimeError if name == "lr" else ValueError
                raise err(f"{name} given as a Tensor needs capturable=True when foreach=True")
            if value.numel() != 1:
                raise ValueError(f"{name} given as a Tensor must have exactly one element")
    if capturable:
        check_capturable_devices(params, steps)
    if differentiable:
        raise AssertionError("the multi-tensor path cannot carry autograd (differentiable=True)")
    lr, beta1, beta2 = squeeze_scalar(lr), squeeze_scalar(beta1), squeeze_scalar(beta2)
    beta1_on: dict[torch.device, Tensor] = {}
    batches = group_by_device_and_dtype(
        [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps]
    )
    for (b_params, b_grads, b_m, b_v, b_vmax, b_steps), _ in batches.values():
        device = b_params[0].device
        b1: float | Tensor = beta1
        if isinstance(beta1, Tensor) and beta1.device.type != "cpu":
            b1 = beta1_on.setdefault(device, beta1.to(device=device, non_blocking=True))
        if has_complex:
            if amsgrad:
                as_real(b_params, b_grads, b_m, b_v, b_vmax)
            else:
                as_real(b_params, b_grads, b_m, b_v)
        decoupled = decoupled_weight_decay and weight_decay != 0
        d = prepare_grads(
            b_grads, b_params, maximize=maximize, weight_decay=0 if decoupled else weight_decay
        )
        add_one_to_steps(b_steps)
        if decoupled:
            torch._foreach_mul_(b_params, 1 - lr * weight_decay)
        torch._foreach_lerp_(b_m, d, 1 - b1)  # type: ignore[arg-type]
        torch._foreach_mul_(b_v, beta2)
        if isinstance(beta2, Tensor):
            # _foreach_addcmul_ takes only a Python number as value: scale first
            scaled = list(torch._foreach_mul(d, 1 - beta2))
            torch._foreach_addcmul_(b_v, scaled, d, 1.0)
        else:
            torch._foreach_addcmul_(b_v, d, d, 1 - beta2)
        del d

        if amsgrad:
            torch._foreach_maximum_(b_vmax, b_v)
            denom = list(torch._foreach_sqrt(b_vmax))
        else:
            denom = list(torch._foreach_sqrt(b_v))

        if capturable:
            # all on device: bc1 becomes -step_size = -(lr / (1 - beta1^t)) ... folded
            bc1 = list(torch._foreach_pow(beta1, b_steps))  # type: ignore[arg-type]
            bc2 = list(torch._foreach_pow(beta2, b_steps))  # type: ignore[arg-type]
            torch._foreach_sub_(bc1, 1)  # beta1^t - 1 = -(1 - beta1^t)
            torch._foreach_sub_(bc2, 1)
            torch._foreach_neg_(bc2)  # 1 - beta2^t
            torch._foreach_div_(bc1, lr)
            torch._foreach_reciprocal_(bc1)  # -lr / (1 - beta1^t)
            torch._foreach_sqrt_(bc2)
            torch._foreach_div_(denom, bc2)
            torch._foreach_add_(denom, eps)
            torch._foreach_div_(denom, bc1)
            torch._foreach_addcdiv_(b_params, b_m, denom)
        else:
            ts = [plain_value(s) for s in b_steps]
            neg_step_sizes = stack_if_compiling([(lr / (1 - beta1**t)) * -1 for t in ts])
            bc2_sqrt = [(1 - beta2**t) ** 0.5 for t in ts]
            torch._foreach_div_(denom, bc2_sqrt)
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(b_params, b_m, denom, neg_step_sizes)


def _fused_adam(
    params: TensorList,
    grads: TensorList,
    exp_avgs: TensorList,
    exp_avg_sqs: TensorList,
    max_exp_avg_sqs: TensorList,
    steps: TensorList,
    *,
    lr: float | Tensor,
    beta1: float | Tensor,
    beta2: float | Tensor,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
    decoupled_weight_decay: bool,
    has_complex: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """``fused=True``: one pass over memory per tensor with the C kernel on CPU
    (``reimpl.kernels.cpu_fused``); elsewhere, or where it cannot take the tensors, the
    multi-tensor path with 16-bit tensors computed in float32 like torch's fused kernels
    (run as capturable on accelerators, where the step counters live with the params)."""
    if not params:
        return
    if differentiable:
        raise RuntimeError("Adam with fused=True cannot run with differentiable=True")
    where = "Adam(fused=True)"
    check_fused_steps(where, params, steps)
    if not has_complex and run_triton(
        "adam_",
        [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps],
        steps_at=5,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        maximize=maximize,
        decoupled_weight_decay=decoupled_weight_decay,
        grad_scale=grad_scale,
        found_inf=found_inf,
    ):
        return
    if found_inf_on_host(found_inf):  # GradScaler found an inf: this step does not happen
        return
    roles = [("param", params), ("grad", grads), ("exp_avg", exp_avgs), ("exp_avg_sq", exp_avg_sqs)]
    if amsgrad:
        roles.append(("max_exp_avg_sq", max_exp_avg_sqs))
    batch = None if has_complex else cpu_fused.prepare(where, roles, scaled=grad_scale is not None)
    if batch is not None:
        lr, beta1, beta2 = plain_value(lr), plain_value(beta1), plain_value(beta2)
        torch._foreach_add_(steps, 1)
        ts = [plain_value(s) for s in steps]
        batch.run(
            "adam",
            cpu_fused.AdamOpts(
                w1=1 - beta1,  # the 1 - beta weights are formed here, in double precision
                b2=beta2,
                w2=1 - beta2,
                eps=eps,
                wd=weight_decay,
                shrink=1 - lr * weight_decay,
                maximize=maximize,
                decoupled=decoupled_weight_decay,
                amsgrad=amsgrad,
            ),
            per=[[lr / (1 - beta1**t) for t in ts], [(1 - beta2**t) ** 0.5 for t in ts]],
            grad_scale=None if grad_scale is None else float(grad_scale),
        )
        return
    check_fused_state(where, roles)
    if grad_scale is not None:
        unscale_grads_(grads, grad_scale)
    on_accel = all(p.device.type != "cpu" for p in params)
    run_widened(
        _multi_tensor_adam,
        [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps],
        lr=lr if on_accel else plain_value(lr),
        beta1=squeeze_scalar(beta1) if on_accel else plain_value(beta1),
        beta2=squeeze_scalar(beta2) if on_accel else plain_value(beta2),
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        maximize=maximize,
        capturable=on_accel,
        differentiable=False,
        decoupled_weight_decay=decoupled_weight_decay,
        has_complex=False,
    )
