"""Stochastic gradient descent with optional (Nesterov) momentum."""

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
    amp_scaling,
    check_fused_flags,
    check_fused_param,
    check_fused_state,
    check_nonnegative,
    choose_path,
    found_inf_on_host,
    group_by_device_and_dtype,
    is_compiling,
    plain_value,
    prepare_grad,
    prepare_grads,
    run_triton,
    run_widened,
    squeeze_scalar,
    unscale_grads_,
    use_grad_for_differentiable,
)

__all__ = ["SGD"]


class SGD(torch.optim.SGD):
    r"""Stochastic gradient descent, optionally with momentum.

    For each parameter :math:`\theta` with gradient :math:`g_t` at step :math:`t`
    (:math:`g_t \leftarrow -g_t` when ``maximize``):

    .. math::
        g_t &\leftarrow g_t + \lambda\,\theta_{t-1}
            \quad\text{(L2 weight decay } \lambda\text{)} \\
        b_1 &= g_1, \qquad b_t = \mu\, b_{t-1} + (1 - \tau)\, g_t
            \quad\text{(momentum } \mu\text{, dampening } \tau\text{)} \\
        d_t &= g_t + \mu\, b_t \text{ if Nesterov, else } b_t
            \quad (d_t = g_t \text{ when } \mu = 0) \\
        \theta_t &= \theta_{t-1} - \gamma\, d_t

    With :math:`\tau = 1 - \mu` the buffer :math:`b_t` is an exponentially weighted
    average of past gradients; the default :math:`\tau = 0` is the classic "heavy ball"
    sum. The buffer is kept in ``state[p]["momentum_buffer"]`` (absent when
    :math:`\mu = 0`, ``None`` until the first step). Sparse gradients are supported on the
    per-tensor and multi-tensor paths.

    Args: as :class:`torch.optim.SGD` — ``lr`` (float or one-element Tensor),
    ``momentum``, ``dampening``, ``weight_decay`` (float or Tensor), ``nesterov``, and
    keyword-only ``maximize``, ``foreach``, ``differentiable``, ``fused``.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError(
                f"lr given as a Tensor must have exactly one element, got {lr.numel()}"
            )
        check_nonnegative("learning rate", lr, nan_ok=True)
        check_nonnegative("momentum value", momentum, nan_ok=True)
        check_nonnegative("weight_decay value", weight_decay, nan_ok=True)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                "nesterov=True needs momentum > 0 and dampening == 0 "
                f"(got momentum={momentum}, dampening={dampening})"
            )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
        }
        Optimizer.__init__(self, params, defaults)  # the base, not the torch class we replace
        check_fused_flags(fused, foreach, differentiable)
        if fused:  # GradScaler hands the scale and found_inf to step (see amp_scaling)
            self._step_supports_amp_scaling = True

    def __setstate__(self, state: dict[str, Any]) -> None:
        Optimizer.__setstate__(self, state)
        for group in self.param_groups:
            for key, value in (
                ("nesterov", False),
                ("maximize", False),
                ("foreach", None),
                ("differentiable", False),
                ("fused", False),
            ):
                group.setdefault(key, value)

    def _init_group(
        self, group: dict[str, Any], params: TensorList, grads: TensorList, bufs: list[Any]
    ) -> bool:
        has_sparse = False
        for p in group["params"]:
            if p.grad is None:
                continue
            if group["fused"]:
                check_fused_param(p)
            params.append(p)
            grads.append(p.grad)
            has_sparse |= p.grad.is_sparse
            if group["momentum"] != 0:
                bufs.append(self.state[p].get("momentum_buffer"))
        return has_sparse

    @use_grad_for_differentiable
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One update of every param with a gradient; ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: TensorList = []
            grads: TensorList = []
            bufs: list[Tensor | None] = []
            has_sparse = self._init_group(group, params, grads, bufs)
            # torch decides SGD's default path without looking at `differentiable`
            path = choose_path(
                params, foreach=group["foreach"], fused=group["fused"], differentiable=False
            )
            update = {"single": _single_tensor_sgd, "multi": _multi_tensor_sgd}.get(
                path, _fused_sgd
            )
            update(
                params,
                grads,
                bufs,
                lr=group["lr"],
                momentum=group["momentum"],
                dampening=group["dampening"],
                weight_decay=group["weight_decay"],
                nesterov=group["nesterov"],
                maximize=group["maximize"],
                has_sparse_grad=has_sparse,
                **amp_scaling(self, path),
            )
            if group["momentum"] != 0:
                for p, buf in zip(params, bufs, strict=True):
                    self.state[p]["momentum_buffer"] = buf
        return loss


def _single_tensor_sgd(
    params: TensorList,
    grads: TensorList,
    bufs: list[Tensor | None],
    *,
    lr: float | Tensor,
    momentum: float,
    dampening: float,
    weight_decay: float | Tensor,
    nesterov: bool,
    maximize: bool,
    has_sparse_grad: bool,
) -> None:
    """Per-tensor loop. Fills ``bufs[i]`` on the first step with momentum."""
    lr = squeeze_scalar(lr)
    for i, param in enumerate(params):
        d = prepare_grad(grads[i], param, maximize=maximize, weight_decay=weight_decay)
        if momentum != 0:
            buf = bufs[i]
            if buf is None:
                buf = bufs[i] = d.detach().clone()
            else:
                buf.mul_(momentum).add_(d, alpha=1 - dampening)
            d = d.add(buf, alpha=momentum) if nesterov else buf
        if isinstance(lr, Tensor) and lr.requires_grad:
            param.addcmul_(d, lr, value=-1)  # keeps the graph to a learnable lr
        else:
            param.add_(d, alpha=-lr)  # type: ignore[arg-type]  # a 1-element Tensor lr is read as a number


def _multi_tensor_sgd(
    params: TensorList,
    grads: TensorList,
    bufs: list[Tensor | None],
    *,
    lr: float | Tensor,
    momentum: float,
    dampening: float,
    weight_decay: float | Tensor,
    nesterov: bool,
    maximize: bool,
    has_sparse_grad: bool,
) -> None:
    """``torch._foreach_*`` over each (device, dtype) batch."""
    if not params:
        return
    lr = squeeze_scalar(lr)
    batches = group_by_device_and_dtype([params, grads, bufs], with_indices=True)
    for (b_params, b_grads, b_bufs), indices in batches.values():
        sparse_here = has_sparse_grad and any(g.is_sparse for g in b_grads)
        d = prepare_grads(b_grads, b_params, maximize=maximize, weight_decay=weight_decay)
        if momentum != 0:
            if all(b is not None for b in b_bufs):
                moms: TensorList = list(b_bufs)
                torch._foreach_mul_(moms, momentum)
                torch._foreach_add_(moms, d, alpha=1 - dampening)
            else:  # some buffers start now: per tensor, as in the loop
                moms = []
                for j, b in enumerate(b_bufs):
                    if b is None:
                        b = b_bufs[j] = bufs[indices[j]] = d[j].detach().clone()
                    else:
                        b.mul_(momentum).add_(d[j], alpha=1 - dampening)
                    moms.append(b)
            if nesterov:
                torch._foreach_add_(d, moms, alpha=momentum)
            else:
                d = moms
        if sparse_here:
            for p, g in zip(b_params, d, strict=True):
                p.add_(g, alpha=-lr)
        elif isinstance(lr, Tensor) and is_compiling():
            torch._foreach_add_(b_params, torch._foreach_mul(d, -lr))
        else:
            torch._foreach_add_(b_params, d, alpha=-lr)  # type: ignore[arg-type]  # a 1-element Tensor lr is read as a number


def _fused_sgd(
    params: TensorList,
    grads: TensorList,
    bufs: list[Tensor | None],
    *,
    lr: float | Tensor,
    momentum: float,
    dampening: float,
    weight_decay: float | Tensor,
    nesterov: bool,
    maximize: bool,
    has_sparse_grad: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """``fused=True``: one pass over memory per tensor with the C kernel on CPU
    (``reimpl.kernels.cpu_fused``); elsewhere the multi-tensor path, with 16-bit tensors
    computed in float32 like torch's fused kernels."""
    if has_sparse_grad:
        raise RuntimeError("SGD with fused=True does not support sparse gradients")
    where = "SGD(fused=True)"
    # the Triton kernel starts all buffers or none in one launch; a checkpoint missing some
    # (torch's for-loop starts those anew) takes the C kernel or the multi-tensor path
    missing = [b is None for b in bufs]
    if (momentum == 0 or all(missing) or not any(missing)) and run_triton(
        "sgd_",
        [params, grads, bufs],
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        maximize=maximize,
        grad_scale=grad_scale,
        found_inf=found_inf,
    ):
        return
    if found_inf_on_host(found_inf):  # GradScaler found an inf: this step does not happen
        return
    roles = [("param", params), ("grad", grads), ("momentum_buffer", bufs if momentum else None)]
    batch = cpu_fused.prepare(where, roles, scaled=grad_scale is not None)  # type: ignore[arg-type]
    if batch is not None:
        lr, weight_decay = plain_value(lr), plain_value(weight_decay)
        first = [0] * len(params)
        if momentum != 0:
            for i, p in enumerate(params):
                if bufs[i] is None:
                    bufs[i], first[i] = torch.empty_like(p), 1
        batch.run(
            "sgd",
            cpu_fused.SGDOpts(
                lr=lr,
                wd=weight_decay,
                momentum=momentum,
                undamped=1 - dampening,
                nesterov=nesterov,
                maximize=maximize,
            ),
            first=first,
            grad_scale=None if grad_scale is None else float(grad_scale),
        )
        return
    check_fused_state(where, roles)  # type: ignore[arg-type]
    if grad_scale is not None:
        unscale_grads_(grads, grad_scale)
    run_widened(
        _multi_tensor_sgd,
        [params, grads, bufs],
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        maximize=maximize,
        has_sparse_grad=False,
    )
