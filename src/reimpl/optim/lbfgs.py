"""L-BFGS (Nocedal, "Updating Quasi-Newton Matrices with Limited Storage", Math. Comp. 1980;
Liu & Nocedal, "On the Limited Memory BFGS Method for Large Scale Optimization", Math.
Programming 1989), with an optional strong-Wolfe line search (Nocedal & Wright, "Numerical
Optimization", 2nd ed., ch. 3: algorithms 3.5 and 3.6, cubic interpolation as eq. 3.59).

Newton's step -H^{-1} g converges in few iterations but needs the inverse Hessian, n^2
numbers. BFGS builds an approximation from the pairs (s, y) = (step taken, change of the
gradient) alone; L-BFGS keeps only the last m pairs and applies the approximation to a
vector by the "two-loop recursion", O(m n) work and memory, never forming a matrix. The
initial matrix is the scalar (s'y)/(y'y) times the identity, the curvature seen along the
last step. The whole parameter set is one vector here (every param of the single group,
complex ones as pairs of reals), the loss is re-evaluated through a closure, and one
``step`` runs up to ``max_iter`` iterations of that method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from reimpl._compat import drop_keyword, torch_at_least
from reimpl.optim._checks import check_hparams
from reimpl.optim._common import (
    TensorList,
    default_foreach,
    group_by_device_and_dtype,
    plain_value,
    squeeze_scalar,
)
from reimpl.optim._fused import Forms
from reimpl.optim.optimizer import Optimizer, ParamsT, ReimplOptimizer

#: torch's LBFGS takes ``maximize`` (and keeps it in its param group) from 2.14 on
MAXIMIZE = torch_at_least(2, 14)

__all__ = ["LBFGS"]


class LBFGSTensors(NamedTuple):
    """The roles of one step, under torch's state keys. The move forms read ``param`` (the
    params, complex ones as real views), ``d`` (the direction cut to their shapes) and
    ``t``; the rest is the state L-BFGS carries over steps, all in ``state[params[0]]``."""

    param: TensorList
    grad: TensorList
    d: TensorList
    t: Any = 0  # step length along d (a number, or a 0-dim tensor)
    old_dirs: tuple[Tensor, ...] = ()  # y_i = g_{i+1} - g_i, oldest first
    old_stps: tuple[Tensor, ...] = ()  # s_i = t_i d_i
    ro: tuple[Tensor, ...] = ()  # rho_i = 1 / (y_i' s_i)
    H_diag: Any = 1  # gamma: H_0 = gamma I
    prev_flat_grad: Tensor | None = None
    prev_loss: float | None = None
    al: tuple[Any, ...] = ()  # alpha_i of the last two-loop pass (its buffer)
    func_evals: int = 0
    n_iter: int = 0  # the counter: iterations over all steps


class LBFGSHP(NamedTuple):
    lr: float | Tensor
    max_iter: int
    max_eval: int
    tolerance_grad: float
    tolerance_change: float
    history_size: int
    line_search_fn: str | None
    has_complex: bool = False


class LBFGS(ReimplOptimizer, torch.optim.LBFGS):
    r"""Limited-memory BFGS over the flat vector :math:`x` of all params, driven by a closure.

    With :math:`g_k = \nabla f(x_k)`, the kept pairs :math:`s_i = x_{i+1} - x_i`,
    :math:`y_i = g_{i+1} - g_i`, :math:`\rho_i = 1 / y_i^\top s_i` (newest last, at most
    ``history_size``; a pair joins only when :math:`y^\top s > 10^{-10}`) and
    :math:`\gamma = s^\top y / y^\top y` of the newest pair:

    .. math::
        q &= -g_k;\quad \alpha_i = \rho_i\, s_i^\top q,\;
            q \leftarrow q - \alpha_i y_i \quad (i \text{ newest to oldest}) \\
        r &= \gamma q;\quad \beta_i = \rho_i\, y_i^\top r,\;
            r \leftarrow r + (\alpha_i - \beta_i)\, s_i \quad (i \text{ oldest to newest}) \\
        d_k &= r \quad (d_1 = -g_1), \qquad x_{k+1} = x_k + t_k d_k

    :math:`t_k` is ``lr`` (on the very first iteration :math:`\min(1, 1/\|g_1\|_1)\,`
    ``lr``), or the strong-Wolfe line search's step from there (:math:`c_1 = 10^{-4}`,
    :math:`c_2 = 0.9`, at most ``max_eval`` evaluations per ``step``). A step stops early
    when :math:`\|g\|_\infty \le` ``tolerance_grad``, :math:`g^\top d > -`
    ``tolerance_change``, :math:`\|t d\|_\infty \le` ``tolerance_change`` or the loss moved
    less than ``tolerance_change``. State keys (all in the first param's state, as torch):
    ``func_evals``, ``n_iter``, ``d``, ``t``, ``old_dirs``, ``old_stps``, ``ro``,
    ``H_diag``, ``prev_flat_grad``, ``prev_loss``, ``al``.

    Args: as :class:`torch.optim.LBFGS` -- ``lr`` (float or one-element Tensor),
    ``max_iter``, ``max_eval`` (default ``max_iter * 5 // 4``), ``tolerance_grad``,
    ``tolerance_change``, ``history_size``, ``line_search_fn`` (None or "strong_wolfe"),
    and, where the installed torch has it (2.14 on), keyword-only ``maximize``: :math:`-f`
    is minimized (its loss and gradient negated as read). One param group only;
    ``step(closure)`` needs the closure.
    """

    _Tensors = LBFGSTensors
    _HP = LBFGSHP

    def _forms(self) -> Forms:
        # the forms move the params along d; no C kernel, no per-param scalars
        return Forms(_single_tensor_lbfgs, _multi_tensor_lbfgs, None, "lbfgs", scalars=())

    def __init__(
        self, params: ParamsT, lr: float | Tensor = 1, max_iter: int = 20,
        max_eval: int | None = None, tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9, history_size: int = 100,
        line_search_fn: str | None = None, *, maximize: bool = False,
    ) -> None:  # fmt: skip
        check_hparams(lr=lr)
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        defaults = {
            "lr": lr, "max_iter": max_iter, "max_eval": max_eval,
            "tolerance_grad": tolerance_grad, "tolerance_change": tolerance_change,
            "history_size": history_size, "line_search_fn": line_search_fn,
            **({"maximize": maximize} if MAXIMIZE else {}),  # (a group key from torch 2.14)
        }  # fmt: skip
        # torch's base set-up alone: no foreach / differentiable / fused keys in the group
        Optimizer.__init__(self, params, defaults)  # type: ignore[arg-type]
        if len(self.param_groups) != 1:
            raise ValueError(
                "LBFGS optimizes one flat vector: give it a single param group (no "
                f"per-parameter options), not {len(self.param_groups)}"
            )
        self._params: list[Tensor] = self.param_groups[0]["params"]
        self._numel_cache = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        Optimizer.__setstate__(self, state)  # type: ignore[arg-type]  # torch's format as is
        self._params = self.param_groups[0]["params"]
        self._numel_cache = None

    # ------------------------------------------------------- the flat vector x

    def _numel(self) -> int:
        """Length of x: a complex param counts twice (real and imaginary parts)."""
        if self._numel_cache is None:
            n = sum(p.numel() * (2 if p.is_complex() else 1) for p in self._params)
            self._numel_cache = n  # type: ignore[assignment]  # torch declares it None
            return n
        return self._numel_cache

    def _gather_flat_grad(self) -> Tensor:
        """g as one new vector; a param without a gradient contributes zeros."""
        parts = []
        for p in self._params:
            g = p.grad
            g = p.new_zeros(p.numel()) if g is None else (g.to_dense() if g.is_sparse else g)
            g = g.view(-1)
            parts.append(torch.view_as_real(g).view(-1) if g.is_complex() else g)
        flat = torch.cat(parts, 0)
        return flat.neg_() if self._maximize() else flat

    def _maximize(self) -> bool:
        return bool(self.param_groups[0].get("maximize", False))

    def _f(self, loss: Any) -> float:
        """The closure's loss as the float minimized: negated when maximizing."""
        f = float(loss)
        return -f if self._maximize() else f

    def _add_grad(self, step_size: Any, update: Tensor) -> None:
        """x += step_size * update, ``update`` a flat vector cut to the params' shapes."""
        reals = [torch.view_as_real(p) if p.is_complex() else p for p in self._params]
        cuts, start = [], 0
        for p in reals:
            cuts.append(update[start : start + p.numel()].view_as(p))
            start += p.numel()
        if start != self._numel():
            raise AssertionError(
                f"the params hold {start} numbers but LBFGS sized x at {self._numel()}: "
                "params must not change shape between steps"
            )
        t = LBFGSTensors(reals, [], cuts, step_size)
        (_multi_tensor_lbfgs if default_foreach(reals, False) else _single_tensor_lbfgs)(
            t, self._hparams(self.param_groups[0])
        )

    def _clone_param(self) -> list[Tensor]:
        return [p.clone(memory_format=torch.contiguous_format) for p in self._params]

    def _set_param(self, params_data: list[Tensor]) -> None:
        for p, saved in zip(self._params, params_data, strict=True):
            p.copy_(saved)

    def _directional_evaluate(
        self, closure: Callable[[], Any], x: list[Tensor], t: Any, d: Tensor
    ) -> tuple[float, Tensor]:
        """f and g at x + t d; the params are put back to x afterwards."""
        self._add_grad(t, d)
        f = self._f(closure())
        g = self._gather_flat_grad()
        self._set_param(x)
        return f, g

    # ------------------------------------------------------------------- step

    def _hparams(self, group: dict[str, Any], **flags: bool) -> LBFGSHP:
        fields = LBFGSHP._fields[:-1]
        has_complex = any(p.is_complex() for p in group["params"])
        return LBFGSHP(**{k: group[k] for k in fields}, has_complex=has_complex)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any]) -> Any:  # type: ignore[override]
        """Up to ``max_iter`` L-BFGS iterations; ``closure`` re-evaluates the loss and the
        gradients (it runs with autograd on). Returns the loss at the starting point."""
        if len(self.param_groups) != 1:
            raise AssertionError(
                f"LBFGS keeps one param group, but {len(self.param_groups)} are registered"
            )
        closure = torch.enable_grad()(closure)
        hp = self._hparams(self.param_groups[0])
        lr = squeeze_scalar(hp.lr)
        tol_change = hp.tolerance_change
        # one state for the whole vector, kept with the first param (so that
        # load_state_dict casts it with that param's dtype and device)
        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        first_loss = closure()
        loss = self._f(first_loss)
        evals = 1
        state["func_evals"] += 1
        g = self._gather_flat_grad()
        if g.abs().max() <= hp.tolerance_grad:  # already stationary
            return first_loss

        d, t = state.get("d"), state.get("t")
        ys_hist, ss_hist, rhos = state.get("old_dirs"), state.get("old_stps"), state.get("ro")
        gamma, g_prev = state.get("H_diag"), state.get("prev_flat_grad")
        loss_prev = state.get("prev_loss")
        for it in range(1, hp.max_iter + 1):
            state["n_iter"] += 1
            if state["n_iter"] == 1:  # steepest descent to begin with
                d, ys_hist, ss_hist, rhos, gamma = g.neg(), [], [], [], 1
            else:
                y, s = g.sub(g_prev), d.mul(t)
                ys = y.dot(s)
                if ys > 1e-10:  # curvature condition: the pair keeps H positive definite
                    if len(ys_hist) == hp.history_size:
                        # pop, as torch does: a tuple or a missing list (a malformed
                        # checkpoint) then fails with torch's AttributeError
                        for hist in (ys_hist, ss_hist, rhos):
                            hist.pop(0)
                    ys_hist.append(y)
                    ss_hist.append(s)
                    rhos.append(1.0 / ys)
                    gamma = ys / y.dot(y)
                alphas = state.setdefault("al", [None] * hp.history_size)
                d = _two_loop(g, ys_hist, ss_hist, rhos, gamma, alphas)
            if g_prev is None:
                g_prev = g.clone(memory_format=torch.contiguous_format)
            else:
                g_prev.copy_(g)
            loss_prev = loss

            t = min(1.0, 1.0 / g.abs().sum()) * lr if state["n_iter"] == 1 else lr
            gtd = g.dot(d)
            if gtd > -tol_change:  # d is no longer a descent direction
                break

            used = 0
            if hp.line_search_fn is not None:
                if hp.line_search_fn != "strong_wolfe":
                    raise RuntimeError(
                        f"line_search_fn={hp.line_search_fn!r}: LBFGS knows only "
                        "'strong_wolfe' (or None for fixed steps of lr)"
                    )
                x0 = self._clone_param()

                def evaluate(step: Any, x0: list[Tensor] = x0, d: Tensor = d) -> Any:
                    return self._directional_evaluate(closure, x0, step, d)

                # the search's own bracket tolerance stays 1e-9 whatever tolerance_change
                # is (torch's behaviour: the group's value is not handed down)
                loss, g, t, used = _strong_wolfe(evaluate, t, d, loss, g, gtd, hp.max_eval - evals)
                self._add_grad(t, d)
                stationary: Any = g.abs().max() <= hp.tolerance_grad
            else:
                self._add_grad(t, d)
                stationary = False
                if it != hp.max_iter:  # the last move is not evaluated (torch's choice)
                    loss = self._f(closure())
                    g = self._gather_flat_grad()
                    stationary = g.abs().max() <= hp.tolerance_grad
                    used = 1
            evals += used
            state["func_evals"] += used

            if it == hp.max_iter or evals >= hp.max_eval or stationary:
                break
            if d.mul(t).abs().max() <= tol_change or abs(loss - loss_prev) < tol_change:
                break  # no progress left to make

        state.update(d=d, t=t, old_dirs=ys_hist, old_stps=ss_hist, ro=rhos, H_diag=gamma)
        state.update(prev_flat_grad=g_prev, prev_loss=loss_prev)
        return first_loss


def _two_loop(g: Tensor, ys: list[Tensor], ss: list[Tensor], rhos: list[Any], gamma: Any,
              alphas: list[Any]) -> Tensor:  # fmt: skip
    """d = -H g by the two-loop recursion, one buffer; ``alphas`` is filled in place."""
    q = g.neg()
    for i in reversed(range(len(ys))):
        alphas[i] = ss[i].dot(q) * rhos[i]
        q.add_(ys[i], alpha=-alphas[i])
    r = torch.mul(q, gamma)
    for i in range(len(ys)):
        beta = ys[i].dot(r) * rhos[i]
        r.add_(ss[i], alpha=alphas[i] - beta)
    return r


def _single_tensor_lbfgs(t: LBFGSTensors, hp: LBFGSHP) -> None:
    """x += t d, one param at a time."""
    for param, d in zip(t.param, t.d, strict=True):
        param.add_(d, alpha=t.t)


def _multi_tensor_lbfgs(t: LBFGSTensors, hp: LBFGSHP) -> None:
    """x += t d, one ``_foreach_add_`` per (device, dtype) batch."""
    step = plain_value(t.t)
    for (params, ds), _ in group_by_device_and_dtype([list(t.param), list(t.d)]).values():
        torch._foreach_add_(params, ds, alpha=step)


def _cubic_min(a: Any, fa: Any, ga: Any, b: Any, fb: Any, gb: Any, bounds: Any = None) -> Any:
    """Minimizer of the cubic through (a, fa) and (b, fb) with slopes ga, gb, clipped to
    ``bounds`` (default: the interval between a and b); their midpoint if none exists."""
    lo, hi = bounds if bounds is not None else ((a, b) if a <= b else (b, a))
    d1 = ga + gb - 3 * (fa - fb) / (a - b)
    disc = d1**2 - ga * gb
    if not disc >= 0:  # no real minimizer (a NaN lands here too)
        return (lo + hi) / 2.0
    d2 = disc.sqrt()
    if a <= b:
        x = b - (b - a) * ((gb + d2 - d1) / (gb - ga + 2 * d2))
    else:
        x = a - (a - b) * ((ga + d2 - d1) / (ga - gb + 2 * d2))
    return min(max(x, lo), hi)


def _strong_wolfe(evaluate: Callable[[Any], Any], t: Any, d: Tensor, f: float, g: Tensor,
                  gtd: Any, max_ls: int, c1: float = 1e-4, c2: float = 0.9,
                  tol_change: float = 1e-9) -> tuple[Any, Tensor, Any, int]:  # fmt: skip
    """A step t along d meeting the strong Wolfe conditions (Nocedal & Wright alg. 3.5):
    bracket one, then zoom in (alg. 3.6). Returns (f, g, t, evaluations)."""
    d_size = d.abs().max()
    f_new, g_new = evaluate(t)
    n_evals, ls_iter = 1, 0
    gtd_new = g_new.dot(d)
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ts: list[Any] | None = None
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            ts, fs, gs, gtds = [t_prev, t], [f_prev, f_new], [g_prev, g_new], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:  # t already satisfies both conditions
            ts, fs, gs, gtds, done = [t], [f_new], [g_new], [gtd_new], True
            break
        if gtd_new >= 0:  # the slope turned: a minimizer lies behind
            ts, fs, gs, gtds = [t_prev, t], [f_prev, f_new], [g_prev, g_new], [gtd_prev, gtd_new]
            break
        # still descending: extrapolate, between 1.01 t and 10 t
        bounds = (t + 0.01 * (t - t_prev), t * 10)
        t_prev, t = t, _cubic_min(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds)
        f_prev, g_prev, gtd_prev = f_new, g_new, gtd_new
        f_new, g_new = evaluate(t)
        n_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
    if ls_iter == max_ls:  # out of evaluations: the best of 0 and the last t
        ts, fs, gs = [0, t], [f, f_new], [g, g_new]
    if ts is None:
        raise UnboundLocalError(f"max_eval leaves the line search {max_ls} evaluations")

    insufficient = False
    low, high = (0, 1) if fs[0] <= fs[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(ts[1] - ts[0]) * d_size < tol_change:  # bracket too small to matter
            break
        t = _cubic_min(ts[0], fs[0], gtds[0], ts[1], fs[1], gtds[1])
        # keep t at least a tenth of the bracket away from its ends: a point at an end
        # (or twice in a row near one) is moved there, so the bracket shrinks
        margin = 0.1 * (max(ts) - min(ts))
        if min(max(ts) - t, t - min(ts)) < margin:
            if insufficient or t >= max(ts) or t <= min(ts):
                t = max(ts) - margin if abs(t - max(ts)) < abs(t - min(ts)) else min(ts) + margin
                insufficient = False
            else:
                insufficient = True
        else:
            insufficient = False
        f_new, g_new = evaluate(t)
        n_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= fs[low]:  # t becomes the high end
            ts[high], fs[high], gs[high], gtds[high] = t, f_new, g_new, gtd_new
            low, high = (0, 1) if fs[0] <= fs[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (ts[high] - ts[low]) >= 0:  # the old low becomes the high end
                ts[high], fs[high], gs[high], gtds[high] = ts[low], fs[low], gs[low], gtds[low]
            ts[low], fs[low], gs[low], gtds[low] = t, f_new, g_new, gtd_new
    return fs[low], gs[low], ts[low], n_evals


if not MAXIMIZE:
    drop_keyword(LBFGS, "maximize")
