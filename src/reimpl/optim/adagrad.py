"""AdaGrad: per-coordinate step sizes from the accumulated squared gradients."""

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
    check_fused_flags,
    check_fused_param,
    check_fused_state,
    check_fused_steps,
    check_nonnegative,
    check_steps,
    choose_path,
    found_inf_on_host,
    group_by_device_and_dtype,
    new_step,
    plain_value,
    prepare_grads,
    run_triton,
    run_widened,
    scalar_dtype,
    squeeze_scalar,
    unscale_grads_,
    use_grad_for_differentiable,
)

__all__ = ["Adagrad"]


class Adagrad(torch.optim.Adagrad):
    r"""AdaGrad.

    For each parameter :math:`\theta` with gradient :math:`g_t` at step :math:`t`
    (:math:`g_t \leftarrow -g_t` when ``maximize``):

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

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError(
                f"lr given as a Tensor must have exactly one element, got {lr.numel()}"
            )
        check_nonnegative("learning rate", lr)
        check_nonnegative("lr_decay value", lr_decay)
        check_nonnegative("weight_decay value", weight_decay)
        check_nonnegative("initial_accumulator_value value", initial_accumulator_value)
        check_nonnegative("epsilon value", eps)
        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "eps": eps,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "fused": fused,
        }
        Optimizer.__init__(self, params, defaults)  # the base, not the torch class we replace
        check_fused_flags(fused, foreach, differentiable)
        if fused:  # GradScaler hands the scale and found_inf to step (see amp_scaling)
            self._step_supports_amp_scaling = True
        # torch fills the state eagerly, from the constructor's accumulator value
        for group in self.param_groups:
            for p in group["params"]:
                self._new_state(p, group, initial_accumulator_value)

    def _new_state(self, p: Tensor, group: dict[str, Any], init: float) -> None:
        state = self.state[p]
        state["step"] = new_step(p, on_param_device=bool(group["fused"]), fused=group["fused"])
        fill = complex(init, init) if torch.is_complex(p) else init
        state["sum"] = torch.full_like(p, fill, memory_format=torch.preserve_format)

    def __setstate__(self, state: dict[str, Any]) -> None:
        Optimizer.__setstate__(self, state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("differentiable", False)
            group.setdefault("fused", None)
            for p in group["params"]:
                s = self.state.get(p, {})
                if s and not torch.is_tensor(s["step"]):  # checkpoints from old torch
                    on_dev = bool(group["fused"])
                    s["step"] = torch.tensor(
                        float(s["step"]),
                        dtype=scalar_dtype(group["fused"]),
                        device=p.device if on_dev else None,
                    )

    def share_memory(self) -> None:
        """Move the ``sum`` accumulators to shared memory (for Hogwild-style training)."""
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["sum"].share_memory_()

    def _init_group(
        self,
        group: dict[str, Any],
        params: TensorList,
        grads: TensorList,
        sums: TensorList,
        steps: TensorList,
    ) -> tuple[bool, bool]:
        has_sparse = has_complex = False
        for p in group["params"]:
            if p.grad is None:
                continue
            if group["fused"]:
                check_fused_param(p)
            has_sparse |= p.grad.is_sparse
            has_complex |= torch.is_complex(p)
            params.append(p)
            grads.append(p.grad)
            state = self.state[p]
            if len(state) == 0:  # added later with add_param_group
                self._new_state(p, group, self.defaults["initial_accumulator_value"])
            sums.append(state["sum"])
            steps.append(state["step"])
        return has_sparse, has_complex

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
            sums: TensorList = []
            steps: TensorList = []
            has_sparse, has_complex = self._init_group(group, params, grads, sums, steps)
            path = choose_path(
                params,
                foreach=group["foreach"],
                fused=group["fused"],
                differentiable=group["differentiable"],
            )
            check_steps(steps)
            update = {"single": _single_tensor_adagrad, "multi": _multi_tensor_adagrad}.get(
                path, _fused_adagrad
            )
            update(
                params,
                grads,
                sums,
                steps,
                lr=group["lr"],
                lr_decay=group["lr_decay"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
                differentiable=group["differentiable"],
                has_sparse_grad=has_sparse,
                has_complex=has_complex,
                **amp_scaling(self, path),
            )
        return loss


def _single_tensor_adagrad(
    params: TensorList,
    grads: TensorList,
    sums: TensorList,
    steps: TensorList,
    *,
    lr: float | Tensor,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    differentiable: bool,
    has_sparse_grad: bool,
    has_complex: bool,
) -> None:
    """Per-tensor loop (also the sparse-gradient path)."""
    lr = squeeze_scalar(lr)
    for param, grad, acc, step_t in zip(params, grads, sums, steps, strict=True):
        step_t += 1
        t = plain_value(step_t)
        if maximize:
            grad = -grad
        if weight_decay != 0:
            if grad.is_sparse:
                raise RuntimeError("Adagrad: weight_decay cannot be used with sparse gradients")
            grad = grad.add(param, alpha=weight_decay)
        step_size = lr / (1 + (t - 1) * lr_decay)
        if grad.is_sparse:
            # the update is non-linear in the gradient, so duplicate indices must merge first
            grad = grad.coalesce()
            idx, vals = grad._indices(), grad._values()
            acc.add_(torch.sparse_coo_tensor(idx, vals.pow(2), grad.size()))
            denom = acc.sparse_mask(grad)._values().sqrt_().add_(eps)
            param.add_(torch.sparse_coo_tensor(idx, vals / denom, grad.size()), alpha=-step_size)
            continue
        if torch.is_complex(param):
            param, grad, acc = (torch.view_as_real(x) for x in (param, grad, acc))
        acc.addcmul_(grad, grad, value=1)
        denom = acc.sqrt() + eps if differentiable else acc.sqrt().add_(eps)
        param.addcdiv_(grad, denom, value=-step_size)


def _multi_tensor_adagrad(
    params: TensorList,
    grads: TensorList,
    sums: TensorList,
    steps: TensorList,
    *,
    lr: float | Tensor,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    differentiable: bool,
    has_sparse_grad: bool,
    has_complex: bool,
) -> None:
    """``torch._foreach_*`` over each (device, dtype) batch; sparse batches use the loop."""
    if differentiable:
        raise AssertionError("the multi-tensor path cannot carry autograd (differentiable=True)")
    if not params:
        return
    lr = squeeze_scalar(lr)
    batches = group_by_device_and_dtype([params, grads, sums, steps])
    for (b_params, b_grads, b_sums, b_steps), _ in batches.values():
        if has_sparse_grad and any(g.is_sparse for g in b_grads):
            _single_tensor_adagrad(
                b_params,
                b_grads,
                b_sums,
                b_steps,
                lr=lr,
                lr_decay=lr_decay,
                weight_decay=weight_decay,
                eps=eps,
                maximize=maximize,
                differentiable=differentiable,
                has_sparse_grad=True,
                has_complex=has_complex,
            )
            continue
        if has_complex:
            as_real(b_params, b_grads, b_sums)
        own_copy = maximize or weight_decay != 0
        d = prepare_grads(b_grads, b_params, maximize=maximize, weight_decay=weight_decay)
        # maximize negates before the step counters move, weight decay after: no difference
        add_one_to_steps(b_steps)
        neg_step_sizes = [-lr / (1 + (plain_value(s) - 1) * lr_decay) for s in b_steps]
        torch._foreach_addcmul_(b_sums, d, d, value=1)
        denom = torch._foreach_sqrt(b_sums)
        torch._foreach_add_(denom, eps)
        if own_copy:
            torch._foreach_mul_(d, neg_step_sizes)
            numer = d
        else:
            numer = list(torch._foreach_mul(d, neg_step_sizes))
        torch._foreach_addcdiv_(b_params, numer, denom)


def _fused_adagrad(
    params: TensorList,
    grads: TensorList,
    sums: TensorList,
    steps: TensorList,
    *,
    lr: float | Tensor,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    differentiable: bool,
    has_sparse_grad: bool,
    has_complex: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """``fused=True``: one pass over memory per tensor with the C kernel on CPU
    (``reimpl.kernels.cpu_fused``); elsewhere the multi-tensor path, with 16-bit tensors
    computed in float32 like torch's fused kernels."""
    if not params:
        return
    if has_sparse_grad or has_complex:
        raise RuntimeError(
            "Adagrad with fused=True supports neither sparse gradients nor complex params"
        )
    if differentiable:
        raise RuntimeError("Adagrad with fused=True cannot run with differentiable=True")
    where = "Adagrad(fused=True)"
    check_fused_steps(where, params, steps)
    if run_triton(
        "adagrad_",
        [params, grads, sums, steps],
        steps_at=3,
        lr=lr,
        lr_decay=lr_decay,
        weight_decay=weight_decay,
        eps=eps,
        maximize=maximize,
        grad_scale=grad_scale,
        found_inf=found_inf,
    ):
        return
    if found_inf_on_host(found_inf):  # GradScaler found an inf: this step does not happen
        return
    roles = [("param", params), ("grad", grads), ("sum", sums)]
    batch = cpu_fused.prepare(where, roles, scaled=grad_scale is not None)
    if batch is not None:
        lr = plain_value(lr)
        torch._foreach_add_(steps, 1)
        clrs = [lr / (1 + (plain_value(s) - 1) * lr_decay) for s in steps]
        batch.run(
            "adagrad",
            cpu_fused.AdagradOpts(wd=weight_decay, eps=eps, maximize=maximize),
            [clrs],
            grad_scale=None if grad_scale is None else float(grad_scale),
        )
        return
    check_fused_state(where, roles)
    if grad_scale is not None:
        unscale_grads_(grads, grad_scale)
    run_widened(
        _multi_tensor_adagrad,
        [params, grads, sums, steps],
        lr=lr,
        lr_decay=lr_decay,
        weight_decay=weight_decay,
        eps=eps,
        maximize=maximize,
        differentiable=False,
        has_sparse_grad=False,
        has_complex=False,
    )
