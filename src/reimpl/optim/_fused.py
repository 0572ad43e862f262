"""``fused=True``: one routine for every optimizer, and the checks it makes.

A fused step reads and writes each tensor once. Where it runs:

1. on GPUs, the optimizer's Triton binding (``reimpl.kernels.triton_optim.<family>_``), all
   tensors of a (device, dtype) batch in one launch;
2. on CPU, the C kernel ``<family>_<dtype>`` (``reimpl.kernels.cpu_fused``), all tensors in
   one call, after :func:`reimpl.kernels.cpu_fused.prepare` has checked every one;
3. anywhere else (16-bit CPU tensors, strided views, tracing, DTensors that do not go
   local): the optimizer's multi-tensor form with 16-bit tensors widened to float32 and
   rounded once on store, which is what a fused kernel computes.

FSDP2 holds params, grads and the state made like them as DTensors sharded on a 1-D mesh:
each rank owns disjoint elements of each. For a rule that reads and writes each element on
its own, the update of a rank's elements needs nothing from another rank, so the step runs
the same three paths on the local shards (:func:`local_shards`); state a kernel creates
there (SGD's first momentum buffers) is stored back as a DTensor, so the checkpoint format
stays the one every other path (and torch) gives.

Each path refuses what the others refuse (same checks, same exception types), so a
malformed state never reaches a kernel, and each honours GradScaler's hand-over
(``grad_scale`` / ``found_inf``, see :func:`amp_scaling`). An optimizer brings only its
:class:`Forms`: the two torch-op forms and the C binding (its options struct and
per-tensor scalars).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import torch
from torch import Tensor

from reimpl.kernels import cpu_fused, guard, triton_available
from reimpl.optim._common import (
    TensorList,
    check_steps,
    group_by_device_and_dtype,
    is_compiling,
    plain_value,
    squeeze_scalar,
)

#: device types where torch accepts ``fused=True``
_FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu", "hpu", "mtia")
_NARROW = (torch.float16, torch.bfloat16)


class CArgs(NamedTuple):
    """What a C kernel call takes besides the tensors: the family's options struct, up to
    two per-tensor scalar lists, and SGD's per-tensor "the buffer starts now" flags."""

    opts: ctypes.Structure
    per: Sequence[Sequence[float]] = ()
    first: Sequence[int] | None = None


class Forms(NamedTuple):
    """One optimizer's update rule in each form. ``single`` and ``multi`` take the tensor
    lists (a NamedTuple, one field per role) and the hyperparameters (a NamedTuple);
    ``c_args`` gives the C kernel its scalars (after the step counters moved), None where
    the family has no C kernel yet; ``family`` names the kernels (a family without a
    Triton binding skips that path)."""

    single: Callable[..., None]
    multi: Callable[..., None]
    c_args: Callable[[Any, Any], CArgs] | None
    family: str
    #: per-param state held as one-element tensors, not shaped like the param
    scalars: tuple[str, ...] = ("step",)
    #: states shaped from their param's shape otherwise than like it, or kept by some
    #: params only (Adafactor's factors and variance): role -> its shape for a param's
    #: shape, None where that param keeps none (the C kernel gets a null pointer there)
    shape_of: guard.ShapeOf = MappingProxyType({})


def adam_family_opts(hp: Any, lr: float) -> ctypes.Structure:
    """The options struct of the C kernels NAdam and RAdam share (Adam's moments, L2 or
    decoupled decay); 1 - beta formed here, in double precision."""
    return cpu_fused.AdamFamilyOpts(
        lr=lr, w1=1 - hp.beta1, b2=hp.beta2, w2=1 - hp.beta2, eps=hp.eps, wd=hp.weight_decay,
        shrink=1 - lr * hp.weight_decay, maximize=hp.maximize,
        decoupled=hp.decoupled_weight_decay,
    )  # fmt: skip


def fused_step(name: str, forms: Forms, t: Any, hp: Any, amp: dict[str, Any]) -> None:
    """One fused update of the tensor lists ``t`` (a NamedTuple whose fields name the
    roles; ``step`` holds the counters): Triton, else C, else the widened multi-tensor
    form (see the module docstring). ``amp``: GradScaler's hand-over (:func:`amp_scaling`)."""
    roles, lists = t._fields, list(t)
    grad_scale, found_inf = amp.get("grad_scale"), amp.get("found_inf")
    params = lists[0]
    if not params:
        return
    where = f"{name}(fused=True)"
    for flag, what in (
        ("has_sparse_grad", "does not support sparse gradients"),
        ("has_complex", "does not support complex params"),
        ("differentiable", "cannot run with differentiable=True"),
    ):
        if getattr(hp, flag, False):
            raise RuntimeError(f"{where} {what}")
    shards = local_shards(forms, t)
    if shards is not None:
        fused_step(name, forms, shards, hp, amp)
        _store_new_shards(t, shards)
        return
    steps_at = roles.index("step") if "step" in roles else None
    steps = None if steps_at is None else lists[steps_at]
    if steps is not None:
        check_fused_steps(where, params, steps)
    kernel_kw = hp._asdict() | {"grad_scale": grad_scale, "found_inf": found_inf}
    scalars_at = frozenset(
        i for i, r in enumerate(roles) if r in forms.scalars or r in forms.shape_of
    )
    if run_triton(f"{forms.family}_", lists, steps_at=steps_at, scalars_at=scalars_at, **kernel_kw):
        return
    if found_inf_on_host(found_inf):  # GradScaler found an inf: this step does not happen
        return
    c_roles = _c_roles(where, forms, roles, lists)
    batch = None
    if forms.c_args is not None:
        scaled = grad_scale is not None
        batch = cpu_fused.prepare(where, c_roles, scaled=scaled, shape_of=forms.shape_of)
    if batch is not None and forms.c_args is not None:
        if steps is not None:
            torch._foreach_add_(steps, 1)
        opts, per, first = forms.c_args(t, hp)
        scale = None if grad_scale is None else float(grad_scale)
        batch.run(forms.family, opts, per, first, grad_scale=scale)
        return
    check_fused_state(where, c_roles, forms.shape_of)
    if grad_scale is not None:
        unscale_grads_(lists[1], grad_scale)
    # fused steps live on the params' device: on accelerators the torch ops stay there
    # (capturable), on the CPU the scalars are read as numbers
    on_accel = all(p.device.type != "cpu" for p in params)
    scalar = squeeze_scalar if on_accel else plain_value
    fields = hp._fields
    hp = hp._replace(**{k: scalar(getattr(hp, k)) for k in ("lr", "beta1", "beta2") if k in fields})
    if "capturable" in fields:
        hp = hp._replace(capturable=on_accel)
    run_widened(forms.multi, t, hp)


def _c_roles(where: str, forms: Forms, roles: Sequence[str], lists: list[Any]) -> guard.Roles:
    """The (role, tensors) the C kernel and the checks take: all but the one-element states;
    a list left empty is a state this configuration does not keep (amsgrad off, ...): None.
    In the roles of ``forms.shape_of``, the entry of a param that keeps no such state is
    None (whatever a checkpoint holds there: no form reads it), and a param that keeps one
    must have it (RuntimeError)."""
    params = lists[0]
    out: list[tuple[str, Any]] = []
    for r, lst in zip(roles, lists, strict=True):
        if r in forms.scalars:
            continue
        shape_of = forms.shape_of.get(r)
        if shape_of is not None and lst:
            kept = [shape_of(p.shape) is not None for p in params]
            for i, (t, keeps) in enumerate(zip(lst, kept, strict=True)):
                if keeps and t is None:
                    raise RuntimeError(f"{where}: {guard.describe(r, i)} is missing")
            lst = [t if keeps else None for t, keeps in zip(lst, kept, strict=True)]
        out.append((r, lst or None))
    return out


# ------------------------------------------------------------ FSDP2: local shards

#: families whose update reads and writes each element on its own (a rank's shard needs
#: nothing from another rank). Not here: Adafactor (row and column means of the squared
#: gradient, and the step's RMS, reduce across shards), Muon (Newton-Schulz acts on the
#: whole matrix), LBFGS (dot products over every parameter), SparseAdam (sparse grads);
#: the last three have no fused path anyway. Adam's family name covers AdamW. A new family
#: is added here once its rule is per element; until then its DTensors keep the fallback.
PER_ELEMENT_FAMILIES = frozenset(
    {"adadelta", "adagrad", "adam", "adamax", "asgd", "nadam", "radam", "rmsprop", "rprop", "sgd"}
)
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def local_shards(forms: Forms, t: Any) -> Any | None:
    """``t`` with each DTensor replaced by its local shard (the same storage), where the
    step may run on the shards; else None and the caller keeps the DTensors (its torch-op
    fallback computes on them as DTensor ops).

    Local only for a family in :data:`PER_ELEMENT_FAMILIES`, outside tracing, where every
    param is a DTensor on a 1-D mesh with ``Shard`` placements (FSDP2's) and every grad
    and every state shaped like its param is a DTensor of the param's mesh, placements and
    global shape (a mismatch stays on the fallback, whose checks name it). Replicated or
    partial placements and 2-D meshes (HSDP, tensor parallel) keep the fallback. The
    one-element states (``forms.scalars``) are plain tensors, as torch makes them."""
    params = t[0]
    if not params or type(params[0]) in _PLAIN or forms.family not in PER_ELEMENT_FAMILIES:
        return None
    if is_compiling() or not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor, Shard

    specs = []
    for p in params:
        if not isinstance(p, DTensor):
            return None
        mesh, placements = p.device_mesh, p.placements
        if mesh.ndim != 1 or not all(type(pl) is Shard for pl in placements):
            return None
        specs.append((mesh, placements, p.shape))
    local: list[list[Any]] = []
    for role, lst in zip(t._fields, t, strict=True):
        if role in forms.scalars or role in forms.shape_of:
            if any(isinstance(x, DTensor) for x in lst):
                return None
            local.append(list(lst))
            continue
        # (an empty list: a state this configuration does not keep)
        for x, (mesh, placements, shape) in zip(lst, specs if lst else (), strict=True):
            if x is not None and not (
                isinstance(x, DTensor)
                and (x.device_mesh is mesh or x.device_mesh == mesh)
                and x.placements == placements
                and x.shape == shape
            ):
                return None
        local.append([None if x is None else _local(x) for x in lst])
    return type(t)(*local)


def _local(x: Any) -> Tensor:
    """A DTensor's local shard. Its private attribute where this torch has one: the public
    ``to_local()`` goes through an autograd Function, about 20x the cost per tensor, which
    a step of many small tensors feels (and a fused step never differentiates)."""
    shard = getattr(x, "_local_tensor", None)
    return shard if isinstance(shard, Tensor) else x.to_local()


def _store_new_shards(t: Any, shards: Any) -> None:
    """State the local step created where ``t`` held None (SGD's first momentum buffers):
    into ``t`` as DTensors sharded as their params, which is how the other paths (a DTensor
    op on the grad) and torch's optimizers keep it."""
    from torch.distributed.tensor import DTensor

    params = t[0]
    for lst, local in zip(t, shards, strict=True):
        for i, (x, y) in enumerate(zip(lst, local, strict=True)):
            if x is None and y is not None:
                p = params[i]
                lst[i] = DTensor.from_local(
                    y, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                    stride=p.stride(),
                )  # fmt: skip


# ------------------------------------------------------------------------- checks


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


def check_fused_state(
    where: str, roles: guard.Roles, shape_of: guard.ShapeOf | None = None
) -> None:
    """What a ``fused=True`` step checks before torch ops compute it (where the C and
    Triton kernels could not take the tensors; those check the same themselves): each
    gradient and state tensor has its parameter's shape, dtype, device and a dense layout
    (:func:`reimpl.kernels.guard.check_like_params`) and no state or param overlaps
    another (:func:`~reimpl.kernels.guard.check_disjoint`). ``RuntimeError`` otherwise,
    naming the parameter's index (among those with a gradient in the group) and the key;
    so every fused path refuses what one refuses. ``shape_of``: as :attr:`Forms.shape_of`."""
    guard.check_like_params(where, roles, shape_of=shape_of)
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


# --------------------------------------------------------------- the three paths


def run_triton(
    kernel: str,
    lists: list[list[Any]],
    *,
    steps_at: int | None,
    scalars_at: frozenset[int] = frozenset(),
    **kwargs: Any,
) -> bool:
    """Run the Triton binding ``reimpl.kernels.triton_optim.<kernel>`` once per (device,
    dtype) batch, with those of ``kwargs`` it takes: the fused path on GPUs (and on CPU
    under the interpreter, for tests). Returns False, having done nothing, where the kernel
    cannot take the tensors (no Triton, CPU, complex or non-contiguous params,
    ``lists[steps_at]`` holding step counters of more than one dtype, a list with some
    entries still ``None``: a kernel starts all of a state or none); the caller then runs
    its fallback. ``scalars_at``: the lists holding one-element per-param states (step
    counters, NAdam's ``mu_product``, ...), which are not shaped like their params."""
    params = lists[0]
    if not params or is_compiling() or not triton_available(params[0]):
        return False
    if steps_at is not None and len({s.dtype for s in lists[steps_at]}) > 1:
        return False
    # plain tensors only: a DTensor (FSDP2) reports a data_ptr() the kernel cannot use
    for j, lst in enumerate(lists):
        if None in lst and any(t is not None for t in lst):
            return False
        for i, t in enumerate(lst):
            if t is None:
                continue
            if not (
                type(t) in _PLAIN
                and triton_available(t)
                and not t.is_complex()
                and t.is_contiguous()
            ):
                return False
            if j not in scalars_at and (t.dtype != params[i].dtype or t.shape != params[i].shape):
                return False  # a mismatch: the C path's or the fallback's check names it
    from reimpl.kernels import triton_optim

    if kernel not in triton_optim.KEYWORDS:  # a family without a Triton binding yet
        return False
    update = getattr(triton_optim, kernel)
    kwargs = {k: v for k, v in kwargs.items() if k in triton_optim.KEYWORDS[kernel]}
    for b_lists, indices in group_by_device_and_dtype(lists, with_indices=True).values():
        update(*b_lists, **kwargs)
        # the kernel may fill None entries (SGD's first momentum buffers): keep them
        for lst, b_lst in zip(lists, b_lists, strict=True):
            for j, i in enumerate(indices):
                if j < len(b_lst) and i < len(lst):
                    lst[i] = b_lst[j]
    return True


def run_widened(update: Callable[..., None], tensors: Any, hp: Any) -> None:
    """Run ``update(tensors, hp)`` with 16-bit tensors widened to float32, then store the
    results back (params and state; ``tensors.grad`` holds the grads, which are inputs).

    This is what a fused kernel does for half-precision params: load, compute in float32,
    round once on store. Buffers the update creates (``None`` entries it fills, as SGD's
    first momentum step does) are stored in their param's dtype.
    """
    lists = list(tensors)
    if not any(t is not None and t.dtype in _NARROW for lst in lists for t in lst):
        update(tensors, hp)
        return
    wide = [
        [t.float() if t is not None and t.dtype in _NARROW else t for t in lst] for lst in lists
    ]
    update(type(tensors)(*wide), hp)
    params = lists[0]
    for k, (lst, wlst) in enumerate(zip(lists, wide, strict=True)):
        if k == 1:
            continue
        for i, (t, w) in enumerate(zip(lst, wlst, strict=True)):
            if t is None and w is not None:
                lst[i] = w.to(params[i].dtype)
            elif t is not None and w is not t:
                t.copy_(w)
