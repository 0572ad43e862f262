"""RMSprop: divide the gradient by a moving root-mean-square of recent gradients."""

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
    unscale_grads_,
    use_grad_for_differentiable,
)

__all__ = ["RMSprop"]


class RMSprop(torch.optim.RMSprop):
    r"""RMSprop.

    For each parameter :math:`\theta` with gradient :math:`g_t` at step :math:`t`
    (:math:`g_t \leftarrow -g_t` when ``maximize``):

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

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError(
                f"lr given as a Tensor must have exactly one element, got {lr.numel()}"
            )
        check_nonnegative("learning rate", lr)
        check_nonnegative("epsilon value", eps)
        check_nonnegative("momentum value", momentum)
        check_nonnegative("weight_decay value", weight_decay)
        check_nonnegative("alpha value", alpha)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "alpha": alpha,
            "eps": eps,
            "centered": centered,
            "weight_decay": weight_decay,
            "capturable": capturable,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
        }
        if fused:
            # only when asked for, so default checkpoints stay exactly torch's format
            defaults["fused"] = fused
        Optimizer.__init__(self, params, defaults)  # the base, not the torch class we replace
        check_fused_flags(fused, foreach, differentiable)
        if fused:  # GradScaler hands the scale and found_inf to step (see amp_scaling)
            self._step_supports_amp_scaling = True

    def __setstate__(self, state: dict[str, Any]) -> None:
        Optimizer.__setstate__(self, state)
        for group in self.param_groups:
            for key, value in (
                ("momentum", 0),
                ("centered", False),
                ("foreach", None),
                ("maximize", False),
                ("differentiable", False),
                ("capturable", False),
            ):
                group.setdefault(key, value)
            for p in group["params"]:
                s = self.state.get(p, {})
                if s and not torch.is_tensor(s["step"]):  # checkpoints from old torch
                    s["step"] = torch.tensor(
                        float(s["step"]),
                        dtype=scalar_dtype(),
                        device=p.device if group["capturable"] else None,
                    )

    def _init_group(
        self,
        group: dict[str, Any],
        params: TensorList,
        grads: TensorList,
        square_avgs: TensorList,
        momentum_bufs: TensorList,
        grad_avgs: TensorList,
        steps: TensorList,
    ) -> bool:
        has_complex = False
        for p in group["params"]:
            if p.grad is None:
                continue
            has_complex |= torch.is_complex(p)
            params.append(p)
            if p.grad.is_sparse:
                raise RuntimeError("RMSprop does not support sparse gradients")
            grads.append(p.grad)
            state = self.state[p]
            if len(state) == 0:
                state["step"] = new_step(p, on_param_device=group["capturable"])
                state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["momentum"] > 0:
                    state["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
                if group["centered"]:
                    state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            square_avgs.append(state["square_avg"])
            steps.append(state["step"])
            if group["momentum"] > 0:
                momentum_bufs.append(state["momentum_buffer"])
            if group["centered"]:
                grad_avgs.append(state["grad_avg"])
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
            square_avgs: TensorList = []
            momentum_bufs: TensorList = []
            grad_avgs: TensorList = []
            steps: TensorList = []
            has_complex = self._init_group(
                group, params, grads, square_avgs, momentum_bufs, grad_avgs, steps
            )
            path = choose_path(
                params,
                foreach=group["foreach"],
                fused=group.get("fused"),  # reimpl's own option; absent unless asked for
                differentiable=group["differentiable"],
            )
            check_steps(steps)
            update = {"single": _single_tensor_rmsprop, "multi": _multi_tensor_rmsprop}.get(
                path, _fused_rmsprop
            )
            update(
                params,
                grads,
                square_avgs,
                grad_avgs,
                momentum_bufs,
                steps,
                lr=group["lr"],
                alpha=group["alpha"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                centered=group["centered"],
                maximize=group["maximize"],
                differentiable=group["differentiable"],
                capturable=group["capturable"],
                has_complex=has_complex,
                **amp_scaling(self, path),
            )
        return loss


def _single_tensor_rmsprop(
    params: TensorList,
    grads: TensorList,
    square_avgs: TensorList,
    grad_avgs: TensorList,
    momentum_bufs: TensorList,
    steps: TensorList,
    *,
    lr: float | Tensor,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    differentiable: bool,
    capturable: bool,
    has_complex: bool,
) -> None:
    """Per-tensor loop."""
    lr = squeeze_scalar(lr)
    for i, param in enumerate(params):
        if capturable:
            check_capturable_devices([param], [steps[i]])
        steps[i] += 1
        grad = prepare_grad(grads[i], param, maximize=maximize, weight_decay=weight_decay)
        v = square_avgs[i]
        real = torch.view_as_real if torch.is_complex(param) else (lambda x: x)
        param, grad, v = real(param), real(grad), real(v)
        v.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        if centered:
            g_avg = real(grad_avgs[i])
            g_avg.lerp_(grad, 1 - alpha)
            rms = v.addcmul(g_avg, g_avg, value=-1).sqrt_()
        else:
            rms = v.sqrt()
        rms = rms.add(eps) if differentiable else rms.add_(eps)
        if momentum > 0:
            buf = real(momentum_bufs[i])
            buf.mul_(momentum).addcdiv_(grad, rms)
            param.add_(buf, alpha=-lr)  # type: ignore[arg-type]  # a 1-element Tensor lr is read as a number
        else:
            param.addcdiv_(grad, rms, value=-lr)  # type: ignore[arg-type]  # a 1-element Tensor lr is read as a number


def _multi_tensor_rmsprop(
    params: TensorList,
    grads: TensorList,
    square_avgs: TensorList,
    grad_avgs: TensorList,
    momentum_bufs: TensorList,
    steps: TensorList,
    *,
    lr: float | Tensor,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    differentiable: bool,
    capturable: bool,
    has_complex: bool,
) -> None:
    """``torch._foreach_*`` over each (device, dtype) batch."""
    if not params:
        return
    if differentiable:
        raise AssertionError("the multi-tensor path cannot carry autograd (differentiable=True)")
    if capturable:
        check_capturable_devices(params, steps)
    lr = squeeze_scalar(lr)
    tensor_lr = capturable and isinstance(lr, Tensor)
    batches = group_by_device_and_dtype(
        [params, grads, square_avgs, grad_avgs, momentum_bufs, steps]
    )
    for (b_params, b_grads, b_sq, b_gavg, b_bufs, b_steps), _ in batches.values():
        if has_complex:
            others = [b_grads, b_sq]
            if momentum > 0:
                others.append(b_bufs)
            if centered:
                others.append(b_gavg)
            as_real(b_params, *others)
        d = prepare_grads(b_grads, b_params, maximize=maximize, weight_decay=weight_decay)
        add_one_to_steps(b_steps)
        torch._foreach_mul_(b_sq, alpha)
        torch._foreach_addcmul_(b_sq, d, d, value=1 - alpha)
        if centered:
            torch._foreach_lerp_(b_gavg, d, 1 - alpha)
            rms = list(torch._foreach_addcmul(b_sq, b_gavg, b_gavg, value=-1))
            torch._foreach_sqrt_(rms)
        else:
            rms = list(torch._foreach_sqrt(b_sq))
        torch._foreach_add_(rms, eps)
        if momentum > 0:
            torch._foreach_mul_(b_bufs, momentum)
            torch._foreach_addcdiv_(b_bufs, d, rms)
            if tensor_lr:
                torch._foreach_add_(b_params, torch._foreach_mul(b_bufs, -lr))
            else:
                torch._foreach_add_(b_params, b_bufs, alpha=-lr)  # type: ignore[arg-type]  # a 1-element Tensor lr is read as a number
        elif tensor_lr:
            torch._foreach_div_(rms, -lr)
            torch._foreach_addcdiv_(b_params, d, rms)
        else:
            torch._foreach_addcdiv_(b_params, d, rms, value=-lr)  # type: ignore[arg-type]  # a 1-element Tensor lr is read as a number


def _fused_rmsprop(
    params: TensorList,
    grads: TensorList,
    square_avgs: TensorList,
    grad_avgs: TensorList,
    momentum_bufs: TensorList,
    steps: TensorList,
    *,
    lr: float | Tensor,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    differentiable: bool,
    capturable: bool,
    has_complex: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """``fused=True`` (reimpl's own option): one pass over memory per tensor with the C
    kernel on CPU (``reimpl.kernels.cpu_fused``); elsewhere the multi-tensor path, with
    16-bit tensors computed in float32."""
    if not params:
        return
    if has_complex:
        raise RuntimeError("RMSprop with fused=True does not support complex params")
    for p in params:
        check_fused_param(p)
    where = "RMSprop(fused=True)"
    check_fused_steps(where, params, steps)
    if run_triton(
        "rmsprop_",
        [params, grads, square_avgs, grad_avgs, momentum_bufs, steps],
        steps_at=5,
        lr=lr,
        alpha=alpha,
        eps=eps,
        weight_decay=weight_decay,
        momentum=momentum,
        centered=centered,
        maximize=maximize,
        grad_scale=grad_scale,
        found_inf=found_inf,
    ):
        return
    if found_inf_on_host(found_inf):  # GradScaler found an inf: this step does not happen
        return
    roles = [
        ("param", params),
        ("grad", grads),
        ("square_avg", square_avgs),
        ("grad_avg", grad_avgs if centered else None),
        ("momentum_buffer", momentum_bufs if momentum > 0 else None),
    ]
    batch = cpu_fused.prepare(where, roles, scaled=grad_scale is not None)
    if batch is not None:
        lr = plain_value(lr)
        torch._foreach_add_(steps, 1)
        batch.run(
            "rmsprop",
            cpu_fused.RMSpropOpts(
                lr=lr,
                alpha=alpha,
                w=1 - alpha,  # formed in double precision
                eps=eps,
                wd=weight_decay,
                momentum=momentum,
                maximize=maximize,
            ),
            grad_scale=None if grad_scale is None else float(grad_scale),
        )
        return
    check_fused_state(where, roles)
    if grad_scale is not None:
        unscale_grads_(grads, grad_scale)
    run_widened(
        _multi_tensor_rmsprop,
        [params, grads, square_avgs, grad_avgs, momentum_bufs, steps],
        lr=lr,
        alpha=alpha,
        eps=eps,
        weight_decay=weight_decay,
        momentum=momentum,
        centered=centered,
        maximize=maximize,
        differentiable=False,
        capturable=capturable,
        has_complex=False,
    )
