"""Machinery every reimpl optimizer shares; the update rules live one per file.

Nothing here knows about a particular algorithm. It holds the small decisions that
would otherwise be repeated in each optimizer: argument checks, which code path runs,
how ``step`` counters are created and advanced, how complex tensors and ``maximize`` /
L2 weight decay are folded into the gradients, and how tensors are batched by device
and dtype for the multi-tensor (``torch._foreach_*``) path.

The base class is torch's own :class:`torch.optim.Optimizer`, so ``param_groups``,
``state_dict`` / ``load_state_dict``, hooks and ``zero_grad`` are exactly torch's.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from reimpl.kernels import guard, triton_available

__all__ = [
    "Optimizer",
    "ParamsT",
    "TensorList",
    "add_one_to_steps",
    "amp_scaling",
    "as_real",
    "check_capturable_devices",
    "check_fused_flags",
    "check_fused_param",
    "check_fused_state",
    "check_fused_steps",
    "check_nonnegative",
    "check_steps",
    "check_tensor_hparam",
    "choose_path",
    "default_foreach",
    "found_inf_on_host",
    "graph_capture_health_check",
    "group_by_device_and_dtype",
    "is_compiling",
    "new_step",
    "plain_value",
    "prepare_grad",
    "prepare_grads",
    "run_widened",
    "scalar_dtype",
    "squeeze_scalar",
    "stack_if_compiling",
    "unscale_grads_",
    "use_grad_for_differentiable",
]

TensorList: TypeAlias = list[Tensor]

#: device types where torch has multi-tensor kernels (the default path there is foreach)
_FOREACH_DEVICES = ("cuda", "xpu", "mtia")
#: device types where torch accepts ``fused=True``
_FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu", "hpu", "mtia")
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


def graph_capture_health_check(opt: Optimizer) -> None:
    """torch's check that a step being captured into a CUDA graph is capturable (a private
    method of torch's Optimizer: ``_accelerator_graph_capture_health_check`` from torch
    2.6, ``_cuda_graph_capture_health_check`` before; neither: nothing to check)."""
    for name in ("_accelerator_graph_capture_health_check", "_cuda_graph_capture_health_check"):
        check = getattr(opt, name, None)
        if check is not None:
            check()
            return


# --------------------------------------------------------------------------- checks


def check_nonnegative(name: str, value: Any, *, nan_ok: bool = False) -> None:
    """Raise ``ValueError`` unless ``0 <= value``. NaN fails too, unless ``nan_ok`` (torch's
    SGD only rejects values below zero, so NaN gets through there)."""
    if (value < 0.0) if nan_ok else not (value >= 0.0):
        raise ValueError(f"Invalid {name}: {value} (it must be >= 0)")


def check_tensor_hparam(name: str, value: Any, *, foreach: bool | None, capturable: bool) -> None:
    """A hyperparameter given as a Tensor must hold one element, and the multi-tensor path
    can only take it when ``capturable=True`` (its ops need Python numbers otherwise)."""
    if not isinstance(value, Tensor):
        return
    if foreach and not capturable:
        raise ValueError(
            f"{name} given as a Tensor needs capturable=True when foreach=True "
            "(pass a float, or set capturable=True, or foreach=False)"
        )
    if value.numel() != 1:
        raise ValueError(
            f"{name} given as a Tensor must have exactly one element, got {value.numel()}"
        )


def check_fused_flags(fused: bool | None, foreach: bool | None, differentiable: bool) -> None:
    if not fused:
        return
    if differentiable:
        raise RuntimeError("fused=True cannot be combined with differentiable=True")
    if foreach:
        raise RuntimeError("fused=True and foreach=True are mutually exclusive; pick one")


def check_fused_param(p: Tensor) -> None:
    if not (p.device.type in _FUSED_DEVICES and torch.is_floating_point(p)):
        raise RuntimeError(
            "fused=True needs every parameter to be a floating-point tensor on one of "
            f"{list(_FUSED_DEVICES)}; got a {p.dtype} tensor on {p.device.type}"
        )


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


def check_fused_steps(where: str, params: Sequence[Tensor], steps: Sequence[Any]) -> None:
    """Each ``step`` of a fused update is a one-element float32/float64 tensor on its
    parameter's device (RuntimeError otherwise, as torch's fused paths)."""
    check_steps(steps)
    for i, (s, p) in enumerate(zip(steps, params, strict=True)):
        if s.numel() != 1 or not s.is_floating_point() or s.device != p.device:
            raise RuntimeError(
                f"{where}: state 'step' of parameter {i} is a {s.dtype} tensor of "
                f"{s.numel()} elements on {s.device}; fused steps keep a one-element "
                f"float32/float64 tensor on the parameter's device ({p.device})"
            )


def check_fused_state(where: str, roles: guard.Roles) -> None:
    """What a ``fused=True`` step checks before torch ops compute it (where the C and
    Triton kernels could not take the tensors; those check the same themselves): each
    gradient and state tensor has its parameter's shape, dtype, device and a dense layout
    (:func:`reimpl.kernels.guard.check_like_params`) and no state or param overlaps
    another (:func:`~reimpl.kernels.guard.check_disjoint`). ``RuntimeError`` otherwise,
    naming the parameter's index (among those with a gradient in the group) and the key;
    so every fused path refuses what one refuses."""
    guard.check_like_params(where, roles)
    guard.check_disjoint(where, roles)


# ------------------------------------------------------------ GradScaler hand-over


def amp_scaling(opt: Any, path: str) -> dict[str, Tensor | None]:
    """What ``torch.amp.GradScaler`` hands a fused optimizer: with
    ``_step_supports_amp_scaling`` set (every ``fused=True`` reimpl optimizer), it does not
    unscale the grads itself but sets ``opt.grad_scale`` (the scale the grads still carry,
    None when already unscaled) and ``opt.found_inf`` for the step to use in its one pass.
    Only the fused path takes them; set on another path they would be ignored, so that is an
    error (AssertionError, as torch)."""
    scale, inf = getattr(opt, "grad_scale", None), getattr(opt, "found_inf", None)
    if path == "fused":
        return {"grad_scale": scale, "found_inf": inf}
    if scale is not None or inf is not None:
        raise AssertionError(
            "grad_scale/found_inf are set on this optimizer, but only fused=True uses them"
        )
    return {}


def found_inf_on_host(found_inf: Tensor | None) -> bool:
    """True when ``found_inf`` says to skip this step (read on the host: the C kernels and
    the fallback decide before they touch anything, steps included)."""
    return found_inf is not None and bool(found_inf.item() != 0)


def unscale_grads_(grads: TensorList, grad_scale: Tensor) -> None:
    """Divide the grads by GradScaler's scale in place, 16-bit ones in float32 and rounded
    once (as a fused kernel does), for the fused path's torch-op fallback."""
    for g in grads:
        if g.dtype in _NARROW:
            g.copy_(g.float().div_(grad_scale.to(g.device)))
        else:
            g.div_(grad_scale.to(g.device))


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


def prepare_grad(grad: Tensor, param: Tensor, *, maximize: bool, weight_decay: Any) -> Tensor:
    """The per-tensor gradient the rules see: negated for ``maximize``, plus the L2 term
    ``weight_decay * param`` (never in place on ``param.grad``)."""
    if maximize:
        grad = -grad
    if weight_decay != 0:
        if isinstance(weight_decay, Tensor) and weight_decay.requires_grad:
            # keep autograd's path to a learnable decay (grad is already a fresh tensor
            # when maximize negated it; otherwise addcmul_ below would write into .grad)
            grad = (grad if maximize else grad.clone()).addcmul_(param.clone(), weight_decay)
        else:
            grad = grad.add(param, alpha=weight_decay)
    return grad


def prepare_grads(
    grads: TensorList, params: TensorList, *, maximize: bool, weight_decay: Any
) -> TensorList:
    """Multi-tensor version of :func:`prepare_grad`; never writes into ``.grad``."""
    if maximize:
        grads = list(torch._foreach_neg(grads))
    if weight_decay != 0:
        if maximize:  # grads is already our own copy
            torch._foreach_add_(grads, params, alpha=weight_decay)
        else:
            grads = list(torch._foreach_add(grads, params, alpha=weight_decay))
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


_NARROW = (torch.float16, torch.bfloat16)


def run_triton(
    kernel: str, lists: list[list[Any]], *, steps_at: int | None = None, **kwargs: Any
) -> bool:
    """Run the Triton kernel ``reimpl.kernels.triton_optim.<kernel>`` once per (device,
    dtype) batch: the fused path on GPUs (and on CPU under the interpreter, for tests).
    Returns False, having done nothing, where the kernel cannot take the tensors (no
    Triton, CPU, complex or non-contiguous params, ``lists[steps_at]`` holding step
    counters of more than one dtype); the caller then runs its fallback."""
    params = lists[0]
    if not params or is_compiling() or not triton_available(params[0]):
        return False
    if steps_at is not None and len({s.dtype for s in lists[steps_at]}) > 1:
        return False
    # plain tensors only: a DTensor (FSDP2) reports a data_ptr() the kernel cannot use
    plain = (torch.Tensor, torch.nn.Parameter)
    for j, lst in enumerate(lists):
        for i, t in enumerate(lst):
            if t is None:
                continue
            if not (
                type(t) in plain
                and triton_available(t)
                and not t.is_complex()
                and t.is_contiguous()
            ):
                return False
            if j != steps_at and (t.dtype != params[i].dtype or t.shape != params[i].shape):
                return False  # a mismatch: the C path's or the fallback's check names it
    from reimpl.kernels import triton_optim

    update = getattr(triton_optim, kernel)
    for b_lists, indices in group_by_device_and_dtype(lists, with_indices=True).values():
        update(*b_lists, **kwargs)
        # the kernel may fill None entries (SGD's first momentum buffers): keep them
        for lst, b_lst in zip(lists, b_lists, strict=True):
            for j, i in enumerate(indices):
                if j < len(b_lst) and i < len(lst):
                    lst[i] = b_lst[j]
    return True


def run_widened(update: Any, lists: list[list[Any]], **kwargs: Any) -> None:
    """Run ``update(*lists, **kwargs)`` with 16-bit tensors widened to float32, then store
    the results back (params and state; ``lists[1]`` holds the grads, which are inputs).

    This is what a fused kernel does for half-precision params: load, compute in float32,
    round once on store. Buffers the update creates (``None`` entries it fills, as SGD's
    first momentum step does) are stored in their param's dtype.
    """
    if not any(t is not None and t.dtype in _NARROW for lst in lists for t in lst):
        update(*lists, **kwargs)
        return
    wide = [
        [t.float() if t is not None and t.dtype in _NARROW else t for t in lst] for lst in lists
    ]
    update(*wide, **kwargs)
    params = lists[0]
    for k, (lst, wlst) in enumerate(zip(lists, wide, strict=True)):
        if k == 1:
            continue
        for i, (t, w) in enumerate(zip(lst, wlst, strict=True)):
            if t is None and w is not None:
                lst[i] = w.to(params[i].dtype)
            elif t is not None and w is not t:
                t.copy_(w)
