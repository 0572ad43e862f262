"""Small pieces the update rules are built from (none knows a particular algorithm).

Argument checks, which code path runs, how ``step`` counters are created and advanced,
how ``maximize`` / L2 weight decay and complex tensors are folded into the gradients, and
how tensors are batched by device and dtype for the multi-tensor (``torch._foreach_*``)
path. Where torch has a private helper for one of these, it is used behind a fallback
written here, so a torch version without it still works.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeAlias

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

TensorList: TypeAlias = list[Tensor]

#: device types where torch has multi-tensor kernels (the default path there is foreach)
_FOREACH_DEVICES = ("cuda", "xpu", "mtia")
#: device types on which ``capturable=True`` is allowed
_CAPTURABLE_DEVICES = ("cuda", "xpu", "hpu", "xla")
#: plain tensor types (subclasses such as DTensor keep the per-tensor loop by default)
_NATIVE_TYPES = (Tensor, torch.nn.Parameter)


def _own_use_grad_for_differentiable(step: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``step`` with autograd on exactly when the optimizer is ``differentiable``."""

    @functools.wraps(step)
    def wrapper(self: Optimizer, *args: Any, **kwargs: Any) -> Any:
        with torch.set_grad_enabled(bool(self.defaults["differentiable"])):
            return step(self, *args, **kwargs)

    return wrapper


#: torch's decorator (private; it also keeps torch.compile's graph breaks where torch's
#: optimizers have them), or our own equivalent where a torch version lacks it
use_grad_for_differentiable: Callable[..., Any] = getattr(
    importlib.import_module("torch.optim.optimizer"),
    "_use_grad_for_differentiable",
    _own_use_grad_for_differentiable,
)


def is_compiling() -> bool:
    return bool(torch.compiler.is_compiling())


def graph_capture_health_check(opt: Any) -> None:
    """torch's check that a step being captured into a CUDA graph is capturable (a private
    method of torch's Optimizer: ``_accelerator_graph_capture_health_check`` from torch
    2.6, ``_cuda_graph_capture_health_check`` before; neither: nothing to check)."""
    for name in ("_accelerator_graph_capture_health_check", "_cuda_graph_capture_health_check"):
        check = getattr(opt, name, None)
        if check is not None:
            check()
            return


# --------------------------------------------------------------------------- checks


def check_capturable_devices(params: Sequence[Tensor], steps: Sequence[Tensor]) -> None:
    """With ``capturable=True`` params and their step counters must sit on an accelerator."""
    if is_compiling():
        return
    for p, s in zip(params, steps, strict=True):
        if not (p.device.type == s.device.type and p.device.type in _CAPTURABLE_DEVICES):
            raise AssertionError(
                "capturable=True needs the params and their step counters on the same "
                f"device, one of {list(_CAPTURABLE_DEVICES)}; got a param on "
                f"{p.device.type} and its step on {s.device.type}"
            )


def check_steps(steps: Sequence[Any]) -> None:
    """Every ``step`` state is a tensor (a number there is an old or hand-made checkpoint
    that was not loaded through ``load_state_dict``): ``RuntimeError``, as torch."""
    for i, s in enumerate(steps):
        if not isinstance(s, Tensor):
            raise RuntimeError(
                f"state 'step' of parameter {i} is a {type(s).__name__}; it must be a "
                "one-element tensor (load checkpoints with load_state_dict, which converts it)"
            )


# ------------------------------------------------------------------ path selection


def default_foreach(params: Sequence[Tensor | None], differentiable: bool) -> bool:
    """torch's default: the multi-tensor path when every param is a plain tensor on a device
    with foreach kernels (CUDA) and autograd need not flow through the step."""
    if differentiable or torch.jit.is_scripting():
        return False
    return all(
        p is None or (type(p) in _NATIVE_TYPES and p.device.type in _FOREACH_DEVICES)
        for p in params
    )


def choose_path(
    params: Sequence[Tensor],
    *,
    foreach: bool | None,
    fused: bool | None,
    differentiable: bool,
    tensor_lr_needs_loop: bool = False,
) -> str:
    """``"fused"``, ``"multi"`` or ``"single"``. Explicit flags win; with neither given the
    default is :func:`default_foreach` (never fused). ``tensor_lr_needs_loop``: a Tensor lr
    without capturable keeps the default on the per-tensor loop."""
    if foreach is None and fused is None:
        foreach = default_foreach(params, differentiable) and not tensor_lr_needs_loop
    if fused:
        return "fused"
    return "multi" if foreach else "single"


# ------------------------------------------------------------------- step counters


def scalar_dtype(fused: bool | None = None) -> torch.dtype:
    """dtype of the ``step`` counters: float32, or float64 when that is the default dtype
    (fused kernels always want float32)."""
    if fused:
        return torch.float32
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def new_step(p: Tensor, *, on_param_device: bool, fused: bool | None = None) -> Tensor:
    """A zero step counter: on the param's device for capturable/fused, else on the CPU."""
    if on_param_device:
        return torch.zeros((), dtype=scalar_dtype(fused), device=p.device)
    return torch.tensor(0.0, dtype=scalar_dtype())


def add_one_to_steps(steps: TensorList) -> None:
    if not is_compiling() and steps[0].is_cpu:
        # one wrapped scalar for the whole list instead of one per tensor
        torch._foreach_add_(steps, torch.tensor(1.0, device="cpu"), alpha=1.0)
    else:
        torch._foreach_add_(steps, 1)


def plain_value(x: Any) -> Any:
    """A CPU scalar tensor as a Python number (fast in eager); untouched while compiling."""
    if is_compiling():
        return x
    return x.item() if isinstance(x, Tensor) else x


def stack_if_compiling(xs: list[Any]) -> Any:
    return torch.stack(xs) if is_compiling() else xs


def squeeze_scalar(x: Any) -> Any:
    """A one-element Tensor hyperparameter as a 0-dim tensor; anything else unchanged."""
    if isinstance(x, Tensor) and x.dim() != 0:
        return x.squeeze()
    return x


# ----------------------------------------------------------------- gradient prep


def begin_step(t: Any, i: int, hp: Any) -> Tensor:
    """A per-tensor form's first move on parameter ``i``: (capturable) its device check,
    its step counter advanced, and the gradient it sees (:func:`grad_with_decay`)."""
    param = t.param[i]
    if getattr(hp, "capturable", False):
        check_capturable_devices([param], [t.step[i]])
    t.step[i] += 1
    return grad_with_decay(t.grad[i], param, hp)


def foreach_ready(t: Any, hp: Any, *, empty_first: bool = True) -> bool:
    """The checks a multi-tensor form makes before any work: foreach ops cannot carry
    autograd (``differentiable``: AssertionError, as torch), capturable params and counters
    sit on one accelerator. False when no param has a gradient; ``empty_first``: that is
    seen before the autograd check (most of torch's optimizers), else after."""
    if empty_first and len(t.param) == 0:
        return False
    if getattr(hp, "differentiable", False):
        raise AssertionError("the multi-tensor path cannot carry autograd (differentiable=True)")
    if getattr(hp, "capturable", False):
        check_capturable_devices(t.param, t.step)
    return len(t.param) > 0  # (torch 2.11's dynamo cannot trace bool() of a list)


def foreach_batches(t: Any, hp: Any, scalars: tuple[str, ...] = ("step",)) -> Iterator[Any]:
    """The multi-tensor forms' batches: per (device, dtype), the lists of ``t`` (same
    NamedTuple type; complex tensors viewed as real, except the one-element ``scalars``
    states), with the step counters advanced, and the gradient the rule sees
    (:func:`grads_with_decay`) as ``(batch, d)``."""
    for lists, _ in group_by_device_and_dtype(list(t)).values():
        b = type(t)(*lists)
        if getattr(hp, "has_complex", True):
            real = [lst for k, lst in zip(b._fields, lists, strict=True) if k not in scalars]
            as_real(real[0], *[lst for lst in real[1:] if lst])
        add_one_to_steps(b.step)
        yield b, grads_with_decay(b.grad, b.param, hp)


def grad_with_decay(grad: Tensor, param: Tensor, hp: Any) -> Tensor:
    """The gradient a rule sees: negated for ``hp.maximize``, with ``hp``'s weight decay
    either decoupled (AdamW, Loshchilov & Hutter 2019: the param shrinks by
    ``lr * weight_decay`` first) or L2 (``weight_decay * param`` added to the gradient).
    Never in place on ``param.grad``."""
    wd = hp.weight_decay
    if wd != 0 and getattr(hp, "decoupled_weight_decay", False):
        param.mul_(1 - hp.lr * wd)
        wd = 0
    if hp.maximize:
        grad = -grad
    if wd != 0:
        if isinstance(wd, Tensor) and wd.requires_grad:
            # keep autograd's path to a learnable decay (grad is already a fresh tensor
            # when maximize negated it; otherwise addcmul_ below would write into .grad)
            grad = (grad if hp.maximize else grad.clone()).addcmul_(param.clone(), wd)
        else:
            grad = grad.add(param, alpha=wd)
    return grad


def grads_with_decay(grads: TensorList, params: TensorList, hp: Any) -> TensorList:
    """Multi-tensor version of :func:`grad_with_decay`; never writes into ``.grad``."""
    wd = hp.weight_decay
    if wd != 0 and getattr(hp, "decoupled_weight_decay", False):
        torch._foreach_mul_(params, 1 - hp.lr * wd)
        wd = 0
    if hp.maximize:
        grads = list(torch._foreach_neg(grads))
    if wd != 0:
        if hp.maximize:  # grads is already our own copy
            torch._foreach_add_(grads, params, alpha=wd)
        else:
            grads = list(torch._foreach_add(grads, params, alpha=wd))
    return grads


def as_real(params: TensorList, *others: list[Any]) -> None:
    """Swap complex tensors (and the matching entries of ``others``) for real views."""
    for i, p in enumerate(params):
        if torch.is_complex(p):
            params[i] = torch.view_as_real(p)
            for lst in others:
                lst[i] = torch.view_as_real(lst[i])


def group_by_device_and_dtype(
    tensorlists: list[list[Any]], with_indices: bool = False
) -> dict[Any, tuple[list[list[Any]], list[int]]]:
    """Batch parallel lists into runs sharing (device, dtype) for the multi-tensor path:
    torch's helper (private), or the same grouping in Python where it is missing."""
    torch_grouping = getattr(Optimizer, "_group_tensors_by_device_and_dtype", None)
    if torch_grouping is not None:
        return torch_grouping(tensorlists, with_indices)  # type: ignore[no-any-return]
    groups: dict[Any, tuple[list[list[Any]], list[int]]] = {}
    for i, t in enumerate(tensorlists[0]):
        lists, indices = groups.setdefault((t.device, t.dtype), ([[] for _ in tensorlists], []))
        for lst, src in zip(lists, tensorlists, strict=True):
            lst.append(src[i] if src else None)
        indices.append(i)
    return groups
