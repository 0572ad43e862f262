r"""Triton multi-tensor kernels for Adam's relatives torch does not fuse: NAdam, RAdam and
Adamax, each in one pass over memory (``triton_optim`` re-exports the bindings).

The rules are those of ``reimpl.optim`` (see the docstrings of ``NAdam``, ``RAdam`` and
``Adamax`` there), in the arithmetic of the C kernels (``cpu_fused.c``), which match torch
already; with :math:`g` the gradient (divided by ``grad_scale``, negated when
``maximize``), :math:`\gamma` the lr and :math:`t` the step count after it moved:

* NAdam and RAdam start as Adam: :math:`\theta \mathrel{*}= 1-\gamma\lambda` (decoupled)
  or :math:`g \mathrel{+}= \lambda\theta`, :math:`m = \mathrm{lerp}(m, g, 1-\beta_1)`,
  :math:`v = \beta_2 v + (1-\beta_2) g^2`.
* NAdam: :math:`\mu_t = \beta_1 (1 - \frac12 0.96^{t\psi})`, :math:`\Pi \mathrel{*}= \mu_t`
  (``mu_product``), :math:`d = \sqrt{v / (1-\beta_2^t)} + \epsilon`,
  :math:`\theta \mathrel{-}= \frac{\gamma (1-\mu_t)}{1-\Pi}\, g/d
  + \frac{\gamma \mu_{t+1}}{1-\Pi\mu_{t+1}}\, m/d`.
* RAdam: :math:`\rho_\infty = 2/(1-\beta_2) - 1`,
  :math:`\rho_t = \rho_\infty - 2t\beta_2^t/(1-\beta_2^t)`; while :math:`\rho_t > 5`,
  :math:`\theta \mathrel{-}= \frac{m}{1-\beta_1^t}\gamma \cdot
  \frac{\sqrt{1-\beta_2^t}}{\sqrt v + \epsilon}\, r_t` (:math:`r_t` the rectification,
  decided per tensor in the kernel), else :math:`\theta \mathrel{-}= \frac{m}{1-\beta_1^t}\gamma`.
* Adamax: :math:`g \mathrel{+}= \lambda\theta`, :math:`m = \mathrm{lerp}(m, g, 1-\beta_1)`,
  :math:`u = \max(\beta_2 u, |g| + \epsilon)` (a NaN wins, as ``torch.maximum``),
  :math:`\theta \mathrel{-}= \frac{\gamma}{1-\beta_1^t}\, m/u`.

Conventions are ``triton_optim``'s: float32 math for 16-bit and float32 tensors, float64
for float64; states stored in the param dtype; the per-tensor scalars (bias corrections,
step sizes, :math:`\mu_t`, :math:`r_t`) in float64 in the kernel from the device step
counter; ``lr`` a float or a 1-element device tensor; GradScaler's ``grad_scale`` and
``found_inf`` taken in the kernel; no host sync.

NAdam's running product :math:`\Pi` is one element per tensor that many programs read,
so it moves in a per-tensor kernel (one lane per tensor) *before* the element kernel,
together with the counter; every block then reads the same :math:`\Pi`. Two launches per
step, as for the other families, and neither touches anything when found_inf is nonzero.
"""

from collections.abc import Sequence

import triton
import triton.language as tl
from torch import Tensor

from reimpl.kernels.triton_common import (
    _advance_steps,
    _base,
    _go,
    _grad,
    _lerp,
    _locate,
    _pow,
    _powf,
    _scalar,
    _slots,
    _tensor_lanes,
)
from reimpl.kernels.triton_launch import (
    _ELEMENT,
    _common,
    _increment_steps,
    _per_tensor,
    _Plan,
    _plan,
)

# float kernel arguments are annotated "fp64" (passed as doubles, not rounded to float32);
# Triton reads the annotations as objects: no ``from __future__ import annotations`` here
# ruff: noqa: F821
# mypy: disable-error-code="name-defined"

__all__ = ["adamax_", "nadam_", "radam_"]


@triton.jit
def _nadam_mu(beta1, t, psi):
    """The warmed-up momentum coefficient of step ``t`` (float64)."""
    return beta1 * (1.0 - 0.5 * _powf(tl.full([], 0.96, tl.float64), t * psi))


@triton.jit
def _nadam_schedule_kernel(
    S, MP, n_tensors, inf_ptr, beta1: "fp64", momentum_decay: "fp64",
    S_ELT: tl.constexpr, M_ELT: tl.constexpr, HAS_INF: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Per tensor, before the update: the counter moves, then ``mu_product *= mu_t`` (in
    the product's dtype, as torch's in-place multiply by a number)."""
    i, mask = _tensor_lanes(n_tensors, inf_ptr, HAS_INF, BLOCK)
    t = _advance_steps(S, i, mask, S_ELT)
    psi = tl.full([], momentum_decay, tl.float64)
    mu = _nadam_mu(tl.full([], beta1, tl.float64), t, psi)
    addr = _slots(MP, i, mask, M_ELT)
    tl.store(addr, tl.load(addr, mask=mask) * mu.to(M_ELT), mask=mask)


@triton.jit
def _nadam_scalars(t, prod, lr, b1, psi, b2):
    """NAdam's per-tensor step sizes, the gradient's and the momentum's, and
    1 - beta2^t (the C kernel's s0, s1, s2)."""
    mu = _nadam_mu(b1, t, psi)
    mu_next = _nadam_mu(b1, t + 1, psi)
    return lr * (1 - mu) / (1 - prod), lr * mu_next / (1 - prod * mu_next), 1 - _pow(b2, t)


@triton.jit
def _radam_scalars(t, b1, b2):
    """RAdam's per-tensor 1 - beta1^t, the rectification r_t (0 while rho_t <= 5: the
    variance is not tractable yet) and sqrt(1 - beta2^t) (the C kernel's s0, s1, s2)."""
    b2t = _pow(b2, t)
    bc2 = 1 - b2t
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * t * b2t / bc2
    # (a negative square only where rho_t <= 5, where r_t is not used)
    r2 = (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
    rect = tl.sqrt(tl.maximum(r2, 0.0))
    return 1 - _pow(b1, t), tl.where(rho > 5, rect, 0.0), tl.sqrt(bc2)


@triton.jit
def _adam_family_update(
    p_ptr, g_ptr, m_ptr, v_ptr, mask, scale_ptr, s0, s1, s2, lr, w1, b2, w2, eps, wd, shrink,
    ELT: tl.constexpr, ACC: tl.constexpr, RADAM: tl.constexpr, MAXIMIZE: tl.constexpr,
    DECOUPLED: tl.constexpr, HAS_WD: tl.constexpr, HAS_SCALE: tl.constexpr,
):  # fmt: skip
    p = tl.load(p_ptr, mask=mask).to(ACC)
    g = _grad(g_ptr, mask, scale_ptr, ELT, ACC, HAS_SCALE, MAXIMIZE)
    if HAS_WD:
        if DECOUPLED:
            p = p * shrink
        else:
            g = g + wd * p
    m = _lerp(tl.load(m_ptr, mask=mask).to(ACC), g, w1)
    v = tl.load(v_ptr, mask=mask).to(ACC) * b2 + w2 * g * g
    tl.store(m_ptr, m.to(ELT), mask=mask)
    tl.store(v_ptr, v.to(ELT), mask=mask)
    if RADAM:
        step = m / s0 * lr
        p = p - tl.where(s1 != 0, step * (s2 / (tl.sqrt(v) + eps)) * s1, step)
    else:
        denom = tl.sqrt(v / s2) + eps
        p = p - s0 * (g / denom) - s1 * (m / denom)
    tl.store(p_ptr, p.to(ELT), mask=mask)


@triton.jit
def _adam_family_kernel(
    P, G, M, V, S, MP,
    blk_tensor, blk_start, numels,
    lr: "fp64", lr_ptr, beta1: "fp64", beta2: "fp64", eps: "fp64", weight_decay: "fp64",
    momentum_decay: "fp64", scale_ptr, inf_ptr,
    ELT: tl.constexpr, ACC: tl.constexpr, S_ELT: tl.constexpr, M_ELT: tl.constexpr,
    LR_PTR: tl.constexpr, RADAM: tl.constexpr, MAXIMIZE: tl.constexpr,
    DECOUPLED: tl.constexpr, HAS_WD: tl.constexpr, HAS_SCALE: tl.constexpr,
    HAS_INF: tl.constexpr, ALIGN: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """NAdam (``RADAM`` false; ``MP`` the running products) or RAdam, as the C kernels:
    Adam's moments, then each rule's step from three per-tensor scalars."""
    idx, offs, end, n = _locate(blk_tensor, blk_start, numels, BLOCK)
    if _go(inf_ptr, HAS_INF):
        lr64 = _scalar(lr, lr_ptr, LR_PTR)
        b1 = tl.full([], beta1, tl.float64)
        b2 = tl.full([], beta2, tl.float64)
        wd = tl.full([], weight_decay, tl.float64)
        t = tl.load(_base(S, idx, S_ELT, 1)).to(tl.float64)
        if RADAM:
            s0, s1, s2 = _radam_scalars(t, b1, b2)
        else:
            prod = tl.load(_base(MP, idx, M_ELT, 1)).to(tl.float64)
            psi = tl.full([], momentum_decay, tl.float64)
            s0, s1, s2 = _nadam_scalars(t, prod, lr64, b1, psi, b2)
        ptrs = (
            _base(P, idx, ELT, ALIGN) + offs,
            _base(G, idx, ELT, ALIGN) + offs,
            _base(M, idx, ELT, ALIGN) + offs,
            _base(V, idx, ELT, ALIGN) + offs,
        )
        scalars = (
            s0.to(ACC), s1.to(ACC), s2.to(ACC), lr64.to(ACC), (1 - b1).to(ACC), b2.to(ACC),
            (1 - b2).to(ACC), tl.full([], eps, ACC), wd.to(ACC), (1 - lr64 * wd).to(ACC),
        )  # fmt: skip
        # two instances: full blocks unmasked, the tail masked
        if end <= n:
            _adam_family_update(
                *ptrs, None, scale_ptr, *scalars, ELT, ACC, RADAM, MAXIMIZE, DECOUPLED, HAS_WD,
                HAS_SCALE,
            )  # fmt: skip
        else:
            _adam_family_update(
                *ptrs, offs < n, scale_ptr, *scalars, ELT, ACC, RADAM, MAXIMIZE, DECOUPLED,
                HAS_WD, HAS_SCALE,
            )  # fmt: skip


@triton.jit
def _adamax_update(
    p_ptr, g_ptr, m_ptr, u_ptr, mask, scale_ptr, clr, w1, b2, eps, wd,
    ELT: tl.constexpr, ACC: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):  # fmt: skip
    p = tl.load(p_ptr, mask=mask).to(ACC)
    g = _grad(g_ptr, mask, scale_ptr, ELT, ACC, HAS_SCALE, MAXIMIZE)
    if HAS_WD:
        g = g + wd * p
    m = _lerp(tl.load(m_ptr, mask=mask).to(ACC), g, w1)
    decayed = tl.load(u_ptr, mask=mask).to(ACC) * b2
    fresh = tl.abs(g) + eps
    u = tl.where((decayed != decayed) | (decayed > fresh), decayed, fresh)  # NaN wins
    tl.store(m_ptr, m.to(ELT), mask=mask)
    tl.store(u_ptr, u.to(ELT), mask=mask)
    p = p - clr * (m / u)
    tl.store(p_ptr, p.to(ELT), mask=mask)


@triton.jit
def _adamax_kernel(
    P, G, M, U, S,
    blk_tensor, blk_start, numels,
    lr: "fp64", lr_ptr, beta1: "fp64", beta2: "fp64", eps: "fp64", weight_decay: "fp64",
    scale_ptr, inf_ptr,
    ELT: tl.constexpr, ACC: tl.constexpr, S_ELT: tl.constexpr, LR_PTR: tl.constexpr,
    MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr, HAS_SCALE: tl.constexpr,
    HAS_INF: tl.constexpr, ALIGN: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    idx, offs, end, n = _locate(blk_tensor, blk_start, numels, BLOCK)
    if _go(inf_ptr, HAS_INF):
        b1 = tl.full([], beta1, tl.float64)
        t = tl.load(_base(S, idx, S_ELT, 1)).to(tl.float64)
        clr = (_scalar(lr, lr_ptr, LR_PTR) / (1 - _pow(b1, t))).to(ACC)
        ptrs = (
            _base(P, idx, ELT, ALIGN) + offs,
            _base(G, idx, ELT, ALIGN) + offs,
            _base(M, idx, ELT, ALIGN) + offs,
            _base(U, idx, ELT, ALIGN) + offs,
        )
        scalars = (
            clr, (1 - b1).to(ACC), tl.full([], beta2, ACC), tl.full([], eps, ACC),
            tl.full([], weight_decay, ACC),
        )  # fmt: skip
        if end <= n:
            _adamax_update(*ptrs, None, scale_ptr, *scalars, ELT, ACC, MAXIMIZE, HAS_WD, HAS_SCALE)
        else:
            _adamax_update(
                *ptrs, offs < n, scale_ptr, *scalars, ELT, ACC, MAXIMIZE, HAS_WD, HAS_SCALE
            )


def _adam_family(
    plan: _Plan, args: dict, steps: Sequence[Tensor], mu_products: Sequence[Tensor] | None,
    beta1: float | Tensor, beta2: float | Tensor, eps: float, weight_decay: float,
    momentum_decay: float, decoupled_weight_decay: bool, maximize: bool,
) -> None:  # fmt: skip
    """The element kernel of NAdam (``mu_products`` given) or RAdam (None)."""
    if not len(plan.blk_tensor):
        return
    s_elt = _ELEMENT[steps[0].dtype]
    _adam_family_kernel[(len(plan.blk_tensor),)](
        *plan.tables, plan.steps, plan.scalars[0] if mu_products else plan.steps,
        plan.blk_tensor, plan.blk_start, plan.numels,
        beta1=float(beta1), beta2=float(beta2), eps=float(eps), weight_decay=float(weight_decay),
        momentum_decay=float(momentum_decay), S_ELT=s_elt,
        M_ELT=_ELEMENT[mu_products[0].dtype] if mu_products else s_elt,
        RADAM=mu_products is None, MAXIMIZE=maximize, DECOUPLED=decoupled_weight_decay,
        HAS_WD=weight_decay != 0, **args,
    )  # fmt: skip


_ADAM_ROLES = ["param", "grad", "exp_avg", "exp_avg_sq"]


def nadam_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    mu_products: Sequence[Tensor],
    steps: Sequence[Tensor],
    *,
    lr: float | Tensor,
    beta1: float | Tensor,
    beta2: float | Tensor,
    eps: float,
    weight_decay: float,
    momentum_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """NAdam (NAdamW when ``decoupled_weight_decay``) on all tensors in two launches: the
    counters and ``mu_products`` (1-element tensors, one per param) per tensor, then the
    elements. Tensor betas are read on the host once (a sync)."""
    if not params:
        return
    roles = [params, grads, exp_avgs, exp_avg_sqs]
    plan = _plan(roles, _ADAM_ROLES, steps, [("mu_product", mu_products)])
    args = _common(params, plan, lr, grad_scale, found_inf)
    _per_tensor(
        _nadam_schedule_kernel, len(params), found_inf, plan.steps, plan.scalars[0],
        beta1=float(beta1), momentum_decay=float(momentum_decay),
        S_ELT=_ELEMENT[steps[0].dtype], M_ELT=_ELEMENT[mu_products[0].dtype],
    )  # fmt: skip
    _adam_family(
        plan, args, steps, mu_products, beta1, beta2, eps, weight_decay, momentum_decay,
        decoupled_weight_decay, maximize,
    )  # fmt: skip


def radam_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[Tensor],
    *,
    lr: float | Tensor,
    beta1: float | Tensor,
    beta2: float | Tensor,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """RAdam on all tensors in one launch (after the counters'); whether a tensor's step is
    rectified is decided in the kernel from its counter. Tensor betas are read on the host
    once (a sync)."""
    if not params:
        return
    plan = _plan([params, grads, exp_avgs, exp_avg_sqs], _ADAM_ROLES, steps)
    args = _common(params, plan, lr, grad_scale, found_inf)
    _increment_steps(steps, plan, found_inf)
    _adam_family(
        plan, args, steps, None, beta1, beta2, eps, weight_decay, 0.0, decoupled_weight_decay,
        maximize,
    )  # fmt: skip


def adamax_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_infs: Sequence[Tensor],
    steps: Sequence[Tensor],
    *,
    lr: float | Tensor,
    beta1: float | Tensor,
    beta2: float | Tensor,
    eps: float,
    weight_decay: float,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """Adamax on all tensors in one launch (after the counters'). Tensor betas are read on
    the host once (a sync)."""
    if not params:
        return
    plan = _plan(
        [params, grads, exp_avgs, exp_infs], ["param", "grad", "exp_avg", "exp_inf"], steps
    )
    args = _common(params, plan, lr, grad_scale, found_inf)
    _increment_steps(steps, plan, found_inf)
    if len(plan.blk_tensor):
        _adamax_kernel[(len(plan.blk_tensor),)](
            *plan.tables, plan.steps, plan.blk_tensor, plan.blk_start, plan.numels,
            beta1=float(beta1), beta2=float(beta2), eps=float(eps),
            weight_decay=float(weight_decay), S_ELT=_ELEMENT[steps[0].dtype], MAXIMIZE=maximize,
            HAS_WD=weight_decay != 0, **args,
        )  # fmt: skip
