r"""Triton multi-tensor kernels for Adadelta, Rprop and ASGD, which torch does not fuse:
each in one pass over memory (``triton_optim`` re-exports the bindings).

The rules are those of ``reimpl.optim`` (see the docstrings of ``Adadelta``, ``Rprop`` and
``ASGD`` there), in the arithmetic of the C kernels (``cpu_fused.c``), which match torch
already; with :math:`g` the gradient (divided by ``grad_scale``, negated when
``maximize``), :math:`\gamma` the lr and :math:`t` the step count after it moved:

* Adadelta: :math:`g \mathrel{+}= \lambda\theta`, :math:`v = \rho v + (1-\rho) g^2`,
  :math:`\Delta = \sqrt{u + \epsilon} / \sqrt{v + \epsilon}\; g`,
  :math:`u = \rho u + (1-\rho) \Delta^2`, :math:`\theta \mathrel{-}= \gamma \Delta`.
* Rprop: :math:`\eta = \eta^+, \eta^-, 1` where :math:`\mathrm{sign}(g\, g_{prev})` is
  :math:`+, -, 0` (torch's sign is 0 for NaN);
  :math:`\Delta = \mathrm{clamp}(\eta\Delta, \Delta_{min}, \Delta_{max})`;
  :math:`g = 0` where :math:`\eta = \eta^-`;
  :math:`\theta \mathrel{-}= \mathrm{sign}(g)\, \Delta`; :math:`g_{prev} = g`.
* ASGD: :math:`g \mathrel{+}= \lambda_{wd}\theta`,
  :math:`\theta \mathrel{-}= \eta\, (g + \lambda\theta)`,
  :math:`\bar\theta \mathrel{+}= \mu\, (\theta - \bar\theta)` with this step's
  :math:`\eta, \mu`; then :math:`\eta = \gamma / (1 + \lambda\gamma t)^\alpha` and
  :math:`\mu = 1 / \max(1, t - t_0)` for the next step.

Conventions are ``triton_optim``'s: float32 math for 16-bit and float32 tensors, float64
for float64; states stored in the param dtype; per-tensor scalars in float64 in the
kernel from the device step counter; ``lr`` a float or a 1-element device tensor (Rprop
has none: its step sizes start at lr); GradScaler's ``grad_scale`` and ``found_inf``
taken in the kernel; no host sync.

ASGD's ``eta`` and ``mu`` are one element per tensor that many programs read, so they
move in a per-tensor kernel (one lane per tensor) *after* the element kernel, with the
counter: every block reads this step's values, and the next are computed (in float64,
rounded once into the state) from the counter on the device. Two launches per step, as for
the other families, and neither touches anything when found_inf is nonzero.
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
    _locate,
    _powf,
    _scalar,
    _slots,
    _tensor_lanes,
)
from reimpl.kernels.triton_launch import _ELEMENT, _common, _increment_steps, _per_tensor, _plan

# float kernel arguments are annotated "fp64" (passed as doubles, not rounded to float32);
# Triton reads the annotations as objects: no ``from __future__ import annotations`` here
# ruff: noqa: F821
# mypy: disable-error-code="name-defined"

__all__ = ["adadelta_", "asgd_", "rprop_"]


@triton.jit
def _adadelta_update(
    p_ptr, g_ptr, v_ptr, u_ptr, mask, scale_ptr, lr, rho, w, eps, wd,
    ELT: tl.constexpr, ACC: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):  # fmt: skip
    p = tl.load(p_ptr, mask=mask).to(ACC)
    g = _grad(g_ptr, mask, scale_ptr, ELT, ACC, HAS_SCALE, MAXIMIZE)
    if HAS_WD:
        g = g + wd * p
    v = tl.load(v_ptr, mask=mask).to(ACC) * rho + w * g * g
    u = tl.load(u_ptr, mask=mask).to(ACC)
    delta = tl.sqrt(u + eps) / tl.sqrt(v + eps) * g
    u = u * rho + w * delta * delta
    tl.store(v_ptr, v.to(ELT), mask=mask)
    tl.store(u_ptr, u.to(ELT), mask=mask)
    p = p - lr * delta
    tl.store(p_ptr, p.to(ELT), mask=mask)


@triton.jit
def _adadelta_kernel(
    P, G, V, U,
    blk_tensor, blk_start, numels,
    lr: "fp64", lr_ptr, rho: "fp64", eps: "fp64", weight_decay: "fp64", scale_ptr, inf_ptr,
    ELT: tl.constexpr, ACC: tl.constexpr, LR_PTR: tl.constexpr, MAXIMIZE: tl.constexpr,
    HAS_WD: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr,
    ALIGN: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    idx, offs, end, n = _locate(blk_tensor, blk_start, numels, BLOCK)
    if _go(inf_ptr, HAS_INF):
        r = tl.full([], rho, tl.float64)
        ptrs = (
            _base(P, idx, ELT, ALIGN) + offs,
            _base(G, idx, ELT, ALIGN) + offs,
            _base(V, idx, ELT, ALIGN) + offs,
            _base(U, idx, ELT, ALIGN) + offs,
        )
        scalars = (
            _scalar(lr, lr_ptr, LR_PTR).to(ACC), r.to(ACC), (1 - r).to(ACC),
            tl.full([], eps, ACC), tl.full([], weight_decay, ACC),
        )  # fmt: skip
        if end <= n:
            _adadelta_update(
                *ptrs, None, scale_ptr, *scalars, ELT, ACC, MAXIMIZE, HAS_WD, HAS_SCALE
            )
        else:
            _adadelta_update(
                *ptrs, offs < n, scale_ptr, *scalars, ELT, ACC, MAXIMIZE, HAS_WD, HAS_SCALE
            )


@triton.jit
def _sign(x):
    """torch.sign: -1, 0 or 1; 0 for NaN too, as torch's (a NaN gradient neither moves
    its weight nor changes its step size)."""
    return (x > 0).to(x.dtype) - (x < 0).to(x.dtype)


@triton.jit
def _rprop_update(
    p_ptr, g_ptr, q_ptr, s_ptr, mask, scale_ptr, etaminus, etaplus, smin, smax,
    ELT: tl.constexpr, ACC: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_SCALE: tl.constexpr,
):  # fmt: skip
    g = _grad(g_ptr, mask, scale_ptr, ELT, ACC, HAS_SCALE, MAXIMIZE)
    # replaced in this order, each test seeing the earlier replacements (as torch's)
    eta = _sign(g * tl.load(q_ptr, mask=mask).to(ACC))
    eta = tl.where(eta > 0, etaplus, eta)
    eta = tl.where(eta < 0, etaminus, eta)
    eta = tl.where(eta == 0, 1.0, eta)
    # torch.clamp: min first, then max (max wins when min > max; NaN stays NaN)
    s = tl.load(s_ptr, mask=mask).to(ACC) * eta
    s = tl.where(s < smin, smin, s)
    s = tl.where(s > smax, smax, s)
    tl.store(s_ptr, s.to(ELT), mask=mask)
    g = tl.where(eta == etaminus, 0.0, g)  # overshot: no move now, no sign next time
    p = tl.load(p_ptr, mask=mask).to(ACC) - _sign(g) * s
    tl.store(p_ptr, p.to(ELT), mask=mask)
    tl.store(q_ptr, g.to(ELT), mask=mask)


@triton.jit
def _rprop_kernel(
    P, G, Q, SS,
    blk_tensor, blk_start, numels,
    etaminus: "fp64", etaplus: "fp64", step_size_min: "fp64", step_size_max: "fp64",
    scale_ptr, inf_ptr,
    ELT: tl.constexpr, ACC: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_SCALE: tl.constexpr,
    HAS_INF: tl.constexpr, ALIGN: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    idx, offs, end, n = _locate(blk_tensor, blk_start, numels, BLOCK)
    if _go(inf_ptr, HAS_INF):
        ptrs = (
            _base(P, idx, ELT, ALIGN) + offs,
            _base(G, idx, ELT, ALIGN) + offs,
            _base(Q, idx, ELT, ALIGN) + offs,
            _base(SS, idx, ELT, ALIGN) + offs,
        )
        scalars = (
            tl.full([], etaminus, ACC), tl.full([], etaplus, ACC),
            tl.full([], step_size_min, ACC), tl.full([], step_size_max, ACC),
        )  # fmt: skip
        if end <= n:
            _rprop_update(*ptrs, None, scale_ptr, *scalars, ELT, ACC, MAXIMIZE, HAS_SCALE)
        else:
            _rprop_update(*ptrs, offs < n, scale_ptr, *scalars, ELT, ACC, MAXIMIZE, HAS_SCALE)


@triton.jit
def _asgd_update(
    p_ptr, g_ptr, x_ptr, mask, scale_ptr, eta, mu, lambd, wd,
    ELT: tl.constexpr, ACC: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):  # fmt: skip
    p = tl.load(p_ptr, mask=mask).to(ACC)
    g = _grad(g_ptr, mask, scale_ptr, ELT, ACC, HAS_SCALE, MAXIMIZE)
    if HAS_WD:
        g = g + wd * p
    # the decay lambd acts on the param like one more gradient term
    p = p - eta * (g + lambd * p)
    tl.store(p_ptr, p.to(ELT), mask=mask)
    x = tl.load(x_ptr, mask=mask).to(ACC)
    tl.store(x_ptr, (x + (p - x) * mu).to(ELT), mask=mask)


@triton.jit
def _asgd_kernel(
    P, G, X, ETA, MU,
    blk_tensor, blk_start, numels,
    lambd: "fp64", weight_decay: "fp64", scale_ptr, inf_ptr,
    ELT: tl.constexpr, ACC: tl.constexpr, E_ELT: tl.constexpr, U_ELT: tl.constexpr,
    MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr, HAS_SCALE: tl.constexpr,
    HAS_INF: tl.constexpr, ALIGN: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    idx, offs, end, n = _locate(blk_tensor, blk_start, numels, BLOCK)
    if _go(inf_ptr, HAS_INF):
        ptrs = (
            _base(P, idx, ELT, ALIGN) + offs,
            _base(G, idx, ELT, ALIGN) + offs,
            _base(X, idx, ELT, ALIGN) + offs,
        )
        scalars = (
            tl.load(_base(ETA, idx, E_ELT, 1)).to(ACC), tl.load(_base(MU, idx, U_ELT, 1)).to(ACC),
            tl.full([], lambd, ACC), tl.full([], weight_decay, ACC),
        )  # fmt: skip
        if end <= n:
            _asgd_update(*ptrs, None, scale_ptr, *scalars, ELT, ACC, MAXIMIZE, HAS_WD, HAS_SCALE)
        else:
            _asgd_update(
                *ptrs, offs < n, scale_ptr, *scalars, ELT, ACC, MAXIMIZE, HAS_WD, HAS_SCALE
            )


@triton.jit
def _asgd_schedule_kernel(
    S, ETA, MU, n_tensors, inf_ptr, lr: "fp64", lr_ptr, lambd: "fp64", alpha: "fp64",
    t0: "fp64", S_ELT: tl.constexpr, E_ELT: tl.constexpr, U_ELT: tl.constexpr,
    LR_PTR: tl.constexpr, HAS_INF: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Per tensor, after the update: the counter moves, then eta and mu for the next step."""
    i, mask = _tensor_lanes(n_tensors, inf_ptr, HAS_INF, BLOCK)
    t = _advance_steps(S, i, mask, S_ELT)
    lr64 = _scalar(lr, lr_ptr, LR_PTR)
    base = 1 + tl.full([], lambd, tl.float64) * lr64 * t
    eta = lr64 / _powf(base, tl.full([], alpha, tl.float64))
    mu = 1 / tl.maximum(t - tl.full([], t0, tl.float64), 1.0)
    tl.store(_slots(ETA, i, mask, E_ELT), eta.to(E_ELT), mask=mask)
    tl.store(_slots(MU, i, mask, U_ELT), mu.to(U_ELT), mask=mask)


def adadelta_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    square_avgs: Sequence[Tensor],
    acc_deltas: Sequence[Tensor],
    steps: Sequence[Tensor],
    *,
    lr: float | Tensor,
    rho: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """Adadelta on all tensors in one launch (after the counters')."""
    if not params:
        return
    names = ["param", "grad", "square_avg", "acc_delta"]
    plan = _plan([params, grads, square_avgs, acc_deltas], names, steps)
    args = _common(params, plan, lr, grad_scale, found_inf)
    _increment_steps(steps, plan, found_inf)
    if len(plan.blk_tensor):
        _adadelta_kernel[(len(plan.blk_tensor),)](
            *plan.tables, plan.blk_tensor, plan.blk_start, plan.numels, rho=float(rho),
            eps=float(eps), weight_decay=float(weight_decay), MAXIMIZE=maximize,
            HAS_WD=weight_decay != 0, **args,
        )  # fmt: skip


def rprop_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    prevs: Sequence[Tensor],
    step_sizes: Sequence[Tensor],
    steps: Sequence[Tensor],
    *,
    etaminus: float,
    etaplus: float,
    step_size_min: float,
    step_size_max: float,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """Rprop on all tensors in one launch (after the counters'). ``step_sizes`` start at
    the optimizer's lr (the caller makes them); no lr is taken here."""
    if not params:
        return
    names = ["param", "grad", "prev", "step_size"]
    plan = _plan([params, grads, prevs, step_sizes], names, steps)
    args = _common(params, plan, None, grad_scale, found_inf)
    _increment_steps(steps, plan, found_inf)
    if len(plan.blk_tensor):
        _rprop_kernel[(len(plan.blk_tensor),)](
            *plan.tables, plan.blk_tensor, plan.blk_start, plan.numels,
            etaminus=float(etaminus), etaplus=float(etaplus),
            step_size_min=float(step_size_min), step_size_max=float(step_size_max),
            MAXIMIZE=maximize, **args,
        )  # fmt: skip


def asgd_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    axs: Sequence[Tensor],
    mus: Sequence[Tensor],
    etas: Sequence[Tensor],
    steps: Sequence[Tensor],
    *,
    lr: float | Tensor,
    lambd: float,
    alpha: float,
    t0: float,
    weight_decay: float,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """ASGD on all tensors in two launches: the elements with this step's ``etas`` and
    ``mus`` (1-element tensors, one per param), then per tensor the counters and the next
    ``etas`` and ``mus``."""
    if not params:
        return
    plan = _plan([params, grads, axs], ["param", "grad", "ax"], steps, [("eta", etas), ("mu", mus)])
    args = _common(params, plan, lr, grad_scale, found_inf)
    lr_args = {k: args.pop(k) for k in ("lr", "lr_ptr", "LR_PTR")}  # the schedule's alone
    eta_t, mu_t = plan.scalars
    e_elt, u_elt = _ELEMENT[etas[0].dtype], _ELEMENT[mus[0].dtype]
    if len(plan.blk_tensor):
        _asgd_kernel[(len(plan.blk_tensor),)](
            *plan.tables, eta_t, mu_t, plan.blk_tensor, plan.blk_start, plan.numels,
            lambd=float(lambd), weight_decay=float(weight_decay), E_ELT=e_elt, U_ELT=u_elt,
            MAXIMIZE=maximize, HAS_WD=weight_decay != 0, **args,
        )  # fmt: skip
    _per_tensor(
        _asgd_schedule_kernel, len(params), found_inf, plan.steps, eta_t, mu_t,
        lambd=float(lambd), alpha=float(alpha), t0=float(t0), S_ELT=_ELEMENT[steps[0].dtype],
        E_ELT=e_elt, U_ELT=u_elt, **lr_args,
    )  # fmt: skip
