r"""Triton multi-tensor optimizer kernels: Adam/AdamW, SGD, Adagrad, RMSprop in one launch,
and (re-exported here, so ``triton_optim.<family>_`` names every binding) NAdam, RAdam,
Adamax (``triton_optim_adam_family``), Adadelta, Rprop and ASGD (``triton_optim_rules``).

Each launcher updates lists of same-device, same-dtype tensors in place with one pass over
memory. The update rules are those of ``reimpl.optim`` (see the docstrings of ``Adam``,
``SGD``, ``Adagrad`` and ``RMSprop`` there); in short, with :math:`g` the gradient
(divided by ``grad_scale``, negated when ``maximize``) and :math:`\gamma` the lr:

* Adam: :math:`g \mathrel{+}= \lambda\theta` (or :math:`\theta \mathrel{*}= 1-\gamma\lambda`
  when decoupled), :math:`m = \mathrm{lerp}(m, g, 1-\beta_1)`,
  :math:`v = \beta_2 v + (1-\beta_2) g^2`, :math:`\hat v = \max(\hat v, v)` (amsgrad),
  :math:`\theta \mathrel{-}= \frac{\gamma}{1-\beta_1^t}\, m /
  (\sqrt{\hat v}/\sqrt{1-\beta_2^t} + \epsilon)`.
* SGD: :math:`g \mathrel{+}= \lambda\theta`; with momentum :math:`b = g` on the first step,
  else :math:`b = \mu b + (1-\tau) g`, then :math:`g = g + \mu b` (nesterov) or :math:`g = b`;
  :math:`\theta \mathrel{-}= \gamma g`.
* Adagrad: :math:`g \mathrel{+}= \lambda\theta`, :math:`s \mathrel{+}= g^2`,
  :math:`\theta \mathrel{-}= \frac{\gamma}{1 + (t-1)\eta}\, g / (\sqrt{s} + \epsilon)`.
* RMSprop: :math:`g \mathrel{+}= \lambda\theta`, :math:`v = \alpha v + (1-\alpha) g^2`,
  centered: :math:`\bar g = \mathrm{lerp}(\bar g, g, 1-\alpha)`,
  :math:`r = \sqrt{v - \bar g^2} + \epsilon`
  (else :math:`r = \sqrt v + \epsilon`); momentum: :math:`b = \mu b + g / r`,
  :math:`\theta \mathrel{-}= \gamma b`, else :math:`\theta \mathrel{-}= \gamma g / r`.

Conventions (those of torch's fused optimizers):

* Arithmetic is float32 for float32/float16/bfloat16 tensors and float64 for float64;
  states are stored in the param dtype (16-bit states are rounded once per step).
  Per-tensor scalars (bias corrections, step sizes) are computed in float64 in-kernel.
* ``steps``: one 1-element float tensor per param on the params' device; the launcher adds
  1 on device before the update (no host sync).
* ``lr``: a float, or a 1-element tensor on the params' device, read inside the kernel.
* ``grad_scale`` (1-element tensor): grads are divided by it, and the unscaled gradient is
  written back into ``grads``. ``found_inf`` (1-element tensor): where nonzero, nothing is
  updated: params, states, grads and steps stay as they were.

Multi-tensor launch (``triton_launch``, ``triton_common``): a block map sends each program
to (tensor, element offset) through int64 tables of data pointers; full blocks run unmasked,
a tensor's last partial block masked; the element math is written once, in
``_<name>_update``. Two launches per step (steps, then everything), no host sync; building
tables is not CUDA-graph capturable, replaying a captured steady-state step is (untested).
"""

import inspect
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from reimpl.kernels.triton_common import _base, _go, _grad, _lerp, _locate, _pow, _scalar
from reimpl.kernels.triton_launch import _ELEMENT, _common, _increment_steps, _plan
from reimpl.kernels.triton_optim_adam_family import adamax_, nadam_, radam_
from reimpl.kernels.triton_optim_rules import adadelta_, asgd_, rprop_

# Kernel float arguments are annotated "fp64" (Triton's type name) so they are passed as
# doubles, not rounded to float32 as plain Python floats are. Triton reads the annotation
# objects, so this module must not use ``from __future__ import annotations`` (which would
# turn "fp64" into '"fp64"' and silently drop back to float32).
# ruff: noqa: F821
# mypy: disable-error-code="name-defined"

__all__ = ["adadelta_", "adagrad_", "adam_", "adamax_", "asgd_", "nadam_", "radam_"]
__all__ += ["rmsprop_", "rprop_", "sgd_"]

# --------------------------------------------------------------------------- kernels
# Each kernel finds its (tensor, block), computes the per-tensor scalars once, and runs the
# element update with no mask on full blocks (vector loads) or masked on a tensor's tail.


@triton.jit
def _adam_update(
    p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, mask, scale_ptr,
    step_size, bc2_sqrt, w1, b2, w2, eps, wd, shrink,
    ELT: tl.constexpr, ACC: tl.constexpr, AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr,
    DECOUPLED: tl.constexpr, HAS_WD: tl.constexpr, HAS_SCALE: tl.constexpr,
):  # fmt: skip
    p = tl.load(p_ptr, mask=mask).to(ACC)
    g = _grad(g_ptr, mask, scale_ptr, ELT, ACC, HAS_SCALE, MAXIMIZE)
    m = tl.load(m_ptr, mask=mask).to(ACC)
    v = tl.load(v_ptr, mask=mask).to(ACC)
    if HAS_WD:
        if DECOUPLED:
            p = p * shrink
        else:
            g = g + wd * p
    m = _lerp(m, g, w1)
    v = v * b2 + w2 * (g * g)
    tl.store(m_ptr, m.to(ELT), mask=mask)
    tl.store(v_ptr, v.to(ELT), mask=mask)
    if AMSGRAD:
        v = tl.maximum(tl.load(vmax_ptr, mask=mask).to(ACC), v)
        tl.store(vmax_ptr, v.to(ELT), mask=mask)
    denom = tl.sqrt(v) / bc2_sqrt + eps
    p = p - step_size * (m / denom)
    tl.store(p_ptr, p.to(ELT), mask=mask)


@triton.jit
def _adam_kernel(
    P, G, M, V, VMAX, S,
    blk_tensor, blk_start, numels,
    lr: "fp64", lr_ptr, beta1: "fp64", beta2: "fp64", eps: "fp64", weight_decay: "fp64",
    scale_ptr, inf_ptr,
    ELT: tl.constexpr, ACC: tl.constexpr, S_ELT: tl.constexpr, LR_PTR: tl.constexpr,
    AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr, DECOUPLED: tl.constexpr,
    HAS_WD: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr,
    ALIGN: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    idx, offs, end, n = _locate(blk_tensor, blk_start, numels, BLOCK)
    if _go(inf_ptr, HAS_INF):
        lr64 = _scalar(lr, lr_ptr, LR_PTR)
        b1 = tl.full([], beta1, tl.float64)
        b2 = tl.full([], beta2, tl.float64)
        wd = tl.full([], weight_decay, tl.float64)
        t = tl.load(_base(S, idx, S_ELT, 1)).to(tl.float64)
        step_size = (lr64 / (1 - _pow(b1, t))).to(ACC)
        bc2_sqrt = tl.sqrt(1 - _pow(b2, t)).to(ACC)
        shrink = (1 - lr64 * wd).to(ACC)
        ptrs = (
            _base(P, idx, ELT, ALIGN) + offs,
            _base(G, idx, ELT, ALIGN) + offs,
            _base(M, idx, ELT, ALIGN) + offs,
            _base(V, idx, ELT, ALIGN) + offs,
            _base(VMAX, idx, ELT, ALIGN) + offs,
        )
        scalars = (
            step_size, bc2_sqrt, (1 - b1).to(ACC), b2.to(ACC), (1 - b2).to(ACC),
            tl.full([], eps, ACC), wd.to(ACC), shrink,
        )  # fmt: skip
        # two instances: full blocks unmasked, the tail masked
        if end <= n:
            _adam_update(
                *ptrs, None, scale_ptr, *scalars, ELT, ACC, AMSGRAD, MAXIMIZE, DECOUPLED, HAS_WD,
                HAS_SCALE,
            )  # fmt: skip
        else:
            _adam_update(
                *ptrs, offs < n, scale_ptr, *scalars, ELT, ACC, AMSGRAD, MAXIMIZE, DECOUPLED,
                HAS_WD, HAS_SCALE,
            )  # fmt: skip


@triton.jit
def _sgd_update(
    p_ptr, g_ptr, b_ptr, mask, scale_ptr, lr, mu, keep, wd,
    ELT: tl.constexpr, ACC: tl.constexpr, MOMENTUM: tl.constexpr, FIRST: tl.constexpr,
    NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):  # fmt: skip
    p = tl.load(p_ptr, mask=mask).to(ACC)
    g = _grad(g_ptr, mask, scale_ptr, ELT, ACC, HAS_SCALE, MAXIMIZE)
    if HAS_WD:
        g = g + wd * p
    if MOMENTUM:
        if FIRST:
            b = g
        else:
            b = tl.load(b_ptr, mask=mask).to(ACC) * mu + keep * g
        tl.store(b_ptr, b.to(ELT), mask=mask)
        if NESTEROV:
            g = g + mu * b
        else:
            g = b
    p = p - lr * g
    tl.store(p_ptr, p.to(ELT), mask=mask)


@triton.jit
def _sgd_kernel(
    P, G, B,
    blk_tensor, blk_start, numels,
    lr: "fp64", lr_ptr, momentum: "fp64", dampening: "fp64", weight_decay: "fp64",
    scale_ptr, inf_ptr,
    ELT: tl.constexpr, ACC: tl.constexpr, LR_PTR: tl.constexpr, MOMENTUM: tl.constexpr,
    FIRST: tl.constexpr, NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr,
    HAS_WD: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr,
    ALIGN: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    idx, offs, end, n = _locate(blk_tensor, blk_start, numels, BLOCK)
    if _go(inf_ptr, HAS_INF):
        ptrs = (
            _base(P, idx, ELT, ALIGN) + offs,
            _base(G, idx, ELT, ALIGN) + offs,
            _base(B, idx, ELT, ALIGN) + offs,
        )
        scalars = (
            _scalar(lr, lr_ptr, LR_PTR).to(ACC),
            tl.full([], momentum, ACC),
            (1 - tl.full([], dampening, tl.float64)).to(ACC),
            tl.full([], weight_decay, ACC),
        )
        # two instances: full blocks unmasked, the tail masked
        if end <= n:
            _sgd_update(
                *ptrs, None, scale_ptr, *scalars, ELT, ACC, MOMENTUM, FIRST, NESTEROV, MAXIMIZE,
                HAS_WD, HAS_SCALE,
            )  # fmt: skip
        else:
            _sgd_update(
                *ptrs, offs < n, scale_ptr, *scalars, ELT, ACC, MOMENTUM, FIRST, NESTEROV,
                MAXIMIZE, HAS_WD, HAS_SCALE,
            )  # fmt: skip


@triton.jit
def _adagrad_update(
    p_ptr, g_ptr, s_ptr, mask, scale_ptr, clr, wd, eps,
    ELT: tl.constexpr, ACC: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):  # fmt: skip
    p = tl.load(p_ptr, mask=mask).to(ACC)
    g = _grad(g_ptr, mask, scale_ptr, ELT, ACC, HAS_SCALE, MAXIMIZE)
    if HAS_WD:
        g = g + wd * p
    s = tl.load(s_ptr, mask=mask).to(ACC) + g * g
    tl.store(s_ptr, s.to(ELT), mask=mask)
    p = p - clr * (g / (tl.sqrt(s) + eps))
    tl.store(p_ptr, p.to(ELT), mask=mask)


@triton.jit
def _adagrad_kernel(
    P, G, SUM, S,
    blk_tensor, blk_start, numels,
    lr: "fp64", lr_ptr, lr_decay: "fp64", weight_decay: "fp64", eps: "fp64",
    scale_ptr, inf_ptr,
    ELT: tl.constexpr, ACC: tl.constexpr, S_ELT: tl.constexpr, LR_PTR: tl.constexpr,
    MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr, HAS_SCALE: tl.constexpr,
    HAS_INF: tl.constexpr, ALIGN: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    idx, offs, end, n = _locate(blk_tensor, blk_start, numels, BLOCK)
    if _go(inf_ptr, HAS_INF):
        t = tl.load(_base(S, idx, S_ELT, 1)).to(tl.float64)
        decay = tl.full([], lr_decay, tl.float64)
        clr = (_scalar(lr, lr_ptr, LR_PTR) / (1 + (t - 1) * decay)).to(ACC)
        ptrs = (
            _base(P, idx, ELT, ALIGN) + offs,
            _base(G, idx, ELT, ALIGN) + offs,
            _base(SUM, idx, ELT, ALIGN) + offs,
        )
        scalars = (clr, tl.full([], weight_decay, ACC), tl.full([], eps, ACC))
        if end <= n:
            _adagrad_update(*ptrs, None, scale_ptr, *scalars, ELT, ACC, MAXIMIZE, HAS_WD, HAS_SCALE)
        else:
            _adagrad_update(
                *ptrs, offs < n, scale_ptr, *scalars, ELT, ACC, MAXIMIZE, HAS_WD, HAS_SCALE
            )


@triton.jit
def _rmsprop_update(
    p_ptr, g_ptr, v_ptr, ga_ptr, b_ptr, mask, scale_ptr, lr, a, w, eps, wd, mu,
    ELT: tl.constexpr, ACC: tl.constexpr, CENTERED: tl.constexpr, MOMENTUM: tl.constexpr,
    MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr, HAS_SCALE: tl.constexpr,
):  # fmt: skip
    p = tl.load(p_ptr, mask=mask).to(ACC)
    g = _grad(g_ptr, mask, scale_ptr, ELT, ACC, HAS_SCALE, MAXIMIZE)
    if HAS_WD:
        g = g + wd * p
    v = tl.load(v_ptr, mask=mask).to(ACC) * a + w * (g * g)
    tl.store(v_ptr, v.to(ELT), mask=mask)
    if CENTERED:
        ga = _lerp(tl.load(ga_ptr, mask=mask).to(ACC), g, w)
        tl.store(ga_ptr, ga.to(ELT), mask=mask)
        rms = tl.sqrt(v - ga * ga) + eps
    else:
        rms = tl.sqrt(v) + eps
    if MOMENTUM:
        b = tl.load(b_ptr, mask=mask).to(ACC) * mu + g / rms
        tl.store(b_ptr, b.to(ELT), mask=mask)
        p = p - lr * b
    else:
        p = p - lr * (g / rms)
    tl.store(p_ptr, p.to(ELT), mask=mask)


@triton.jit
def _rmsprop_kernel(
    P, G, V, GAVG, B,
    blk_tensor, blk_start, numels,
    lr: "fp64", lr_ptr, alpha: "fp64", eps: "fp64", weight_decay: "fp64", momentum: "fp64",
    scale_ptr, inf_ptr,
    ELT: tl.constexpr, ACC: tl.constexpr, LR_PTR: tl.constexpr, CENTERED: tl.constexpr,
    MOMENTUM: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, ALIGN: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    idx, offs, end, n = _locate(blk_tensor, blk_start, numels, BLOCK)
    if _go(inf_ptr, HAS_INF):
        a = tl.full([], alpha, tl.float64)
        ptrs = (
            _base(P, idx, ELT, ALIGN) + offs,
            _base(G, idx, ELT, ALIGN) + offs,
            _base(V, idx, ELT, ALIGN) + offs,
            _base(GAVG, idx, ELT, ALIGN) + offs,
            _base(B, idx, ELT, ALIGN) + offs,
        )
        scalars = (
            _scalar(lr, lr_ptr, LR_PTR).to(ACC), a.to(ACC), (1 - a).to(ACC),
            tl.full([], eps, ACC), tl.full([], weight_decay, ACC), tl.full([], momentum, ACC),
        )  # fmt: skip
        # two instances: full blocks unmasked, the tail masked
        if end <= n:
            _rmsprop_update(
                *ptrs, None, scale_ptr, *scalars, ELT, ACC, CENTERED, MOMENTUM, MAXIMIZE, HAS_WD,
                HAS_SCALE,
            )  # fmt: skip
        else:
            _rmsprop_update(
                *ptrs, offs < n, scale_ptr, *scalars, ELT, ACC, CENTERED, MOMENTUM, MAXIMIZE,
                HAS_WD, HAS_SCALE,
            )  # fmt: skip


def adam_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    max_exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[Tensor],
    *,
    lr: float | Tensor,
    beta1: float | Tensor,
    beta2: float | Tensor,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """Adam (AdamW when ``decoupled_weight_decay``) on all tensors in one launch.

    ``max_exp_avg_sqs`` is used only with ``amsgrad`` (may be empty otherwise). Tensor
    betas are read on the host once (a sync), as torch's fused path does.
    """
    if not params:
        return
    roles = [params, grads, exp_avgs, exp_avg_sqs]
    names = ["param", "grad", "exp_avg", "exp_avg_sq"]
    if amsgrad:
        roles.append(max_exp_avg_sqs)
        names.append("max_exp_avg_sq")
    plan = _plan(roles, names, steps)
    args = _common(params, plan, lr, grad_scale, found_inf)
    _increment_steps(steps, plan, found_inf)
    if len(plan.blk_tensor):
        p, g, m, v, *vmax = plan.tables
        _adam_kernel[(len(plan.blk_tensor),)](
            p, g, m, v, vmax[0] if amsgrad else v, plan.steps,
            plan.blk_tensor, plan.blk_start, plan.numels,
            beta1=float(beta1), beta2=float(beta2), eps=float(eps),
            weight_decay=float(weight_decay), S_ELT=_ELEMENT[steps[0].dtype], AMSGRAD=amsgrad,
            MAXIMIZE=maximize, DECOUPLED=decoupled_weight_decay, HAS_WD=weight_decay != 0,
            **args,
        )  # fmt: skip


def sgd_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float | Tensor,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """SGD on all tensors in one launch.

    With ``momentum != 0``, ``momentum_buffers`` holds one entry per param: all ``None``
    on the first step (the list is then filled in place with new buffers, which the
    kernel sets to the gradient, as torch does), or all tensors. Ignored when
    ``momentum == 0``.
    """
    if not params:
        return
    roles: list[Sequence[Tensor]] = [params, grads]
    first = False
    if momentum != 0:
        if len(momentum_buffers) != len(params):
            raise ValueError("momentum_buffers needs one entry per param")
        missing = [b is None for b in momentum_buffers]
        first = all(missing)
        if any(missing) and not first:
            raise ValueError("momentum_buffers must be all None (first step) or all tensors")
        if first:
            # zeros, not empty: if found_inf skips this step, the next one reads them
            momentum_buffers[:] = [torch.zeros_like(p) for p in params]
        roles.append([b for b in momentum_buffers if b is not None])
    plan = _plan(roles, ["param", "grad", "momentum_buffer"][: len(roles)], None)
    if len(plan.blk_tensor):
        p, g, *buf = plan.tables
        _sgd_kernel[(len(plan.blk_tensor),)](
            p, g, buf[0] if buf else p, plan.blk_tensor, plan.blk_start, plan.numels,
            momentum=float(momentum), dampening=float(dampening),
            weight_decay=float(weight_decay), MOMENTUM=momentum != 0, FIRST=first,
            NESTEROV=nesterov, MAXIMIZE=maximize, HAS_WD=weight_decay != 0,
            **_common(params, plan, lr, grad_scale, found_inf),
        )  # fmt: skip


def adagrad_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    state_sums: Sequence[Tensor],
    steps: Sequence[Tensor],
    *,
    lr: float | Tensor,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """Adagrad on all tensors in one launch."""
    if not params:
        return
    plan = _plan([params, grads, state_sums], ["param", "grad", "sum"], steps)
    args = _common(params, plan, lr, grad_scale, found_inf)
    _increment_steps(steps, plan, found_inf)
    if len(plan.blk_tensor):
        _adagrad_kernel[(len(plan.blk_tensor),)](
            *plan.tables, plan.steps, plan.blk_tensor, plan.blk_start, plan.numels,
            lr_decay=float(lr_decay), weight_decay=float(weight_decay), eps=float(eps),
            S_ELT=_ELEMENT[steps[0].dtype], MAXIMIZE=maximize, HAS_WD=weight_decay != 0,
            **args,
        )  # fmt: skip


def rmsprop_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    square_avgs: Sequence[Tensor],
    grad_avgs: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor],
    steps: Sequence[Tensor],
    *,
    lr: float | Tensor,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """RMSprop on all tensors in one launch. ``grad_avgs`` is used only when ``centered``,
    ``momentum_buffers`` only when ``momentum > 0`` (either may be empty otherwise)."""
    if not params:
        return
    roles = [params, grads, square_avgs]
    names = ["param", "grad", "square_avg"]
    if centered:
        roles.append(grad_avgs)
        names.append("grad_avg")
    if momentum > 0:
        roles.append(momentum_buffers)
        names.append("momentum_buffer")
    plan = _plan(roles, names, steps)
    args = _common(params, plan, lr, grad_scale, found_inf)
    _increment_steps(steps, plan, found_inf)
    if len(plan.blk_tensor):
        p, g, v, *rest = plan.tables
        gavg = rest[0] if centered else v
        buf = rest[-1] if momentum > 0 else v
        _rmsprop_kernel[(len(plan.blk_tensor),)](
            p, g, v, gavg, buf, plan.blk_tensor, plan.blk_start, plan.numels,
            alpha=float(alpha), eps=float(eps), weight_decay=float(weight_decay),
            momentum=float(momentum), CENTERED=centered, MOMENTUM=momentum > 0,
            MAXIMIZE=maximize, HAS_WD=weight_decay != 0, **args,
        )  # fmt: skip


#: the keywords each binding takes, read once here: the fused routine hands a binding those
#: of an optimizer's hyperparameters it names (and no others)
_BINDINGS = (adam_, sgd_, adagrad_, rmsprop_, nadam_, radam_, adamax_, adadelta_, rprop_, asgd_)
KEYWORDS = {fn.__name__: frozenset(inspect.signature(fn).parameters) for fn in _BINDINGS}
