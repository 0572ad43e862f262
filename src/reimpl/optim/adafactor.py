"""Adafactor (Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory
Cost", ICML 2018).

Adam keeps a second moment as large as the parameter. For a matrix of n x m weights,
Adafactor keeps only its row means (n numbers) and column means (m numbers) of the squared
gradient, and rebuilds the full estimate as their outer product divided by the overall mean:
the best rank-1 fit in the sense of the paper's generalized KL divergence. Memory for the
second moment drops from n*m to n+m, which is what lets very large models train with an
adaptive rule. Vectors (and scalars) keep the plain moving average. The paper adds three
pieces that make it stable without a first moment: a decay rate that rises towards 1 with
the step (``1 - beta2_t = t^beta2_decay``), update clipping (the step's root mean square is
held to at most ``d``), and a relative step size (the step scales with the parameter's own
root mean square, at least ``eps2``). As torch, ``lr`` caps the relative step size and
scales the decoupled weight decay (Loshchilov & Hutter, 2019), and ``eps1`` guards the
factored estimate and the final division instead of the squared gradient.
"""

from __future__ import annotations

import ctypes
from typing import Any, NamedTuple

import torch
from torch import Tensor

from reimpl.kernels import cpu_fused
from reimpl.optim._checks import check_hparams, check_nonnegative
from reimpl.optim._common import (
    TensorList,
    add_one_to_steps,
    choose_path,
    foreach_ready,
    group_by_device_and_dtype,
    plain_value,
    squeeze_scalar,
)
from reimpl.optim._fused import CArgs, Forms, check_fused_param
from reimpl.optim.optimizer import ParamsT, ReimplOptimizer

__all__ = ["Adafactor"]


class AdafactorTensors(NamedTuple):
    """The tensor lists an update takes, one per role (the state keys). A param of two or
    more dims has ``row_var`` and ``col_var`` (``None`` in ``variance``), any other only
    ``variance`` (``None`` in the other two)."""

    param: TensorList
    grad: TensorList
    row_var: list[Tensor | None]
    col_var: list[Tensor | None]
    variance: list[Tensor | None]
    step: TensorList


class AdafactorHP(NamedTuple):
    lr: float | Tensor
    beta2_decay: float
    eps1: float | None  # None: the machine epsilon of the first param's (batch's) dtype
    eps2: float
    d: float
    weight_decay: float
    maximize: bool


class Adafactor(ReimplOptimizer, torch.optim.Adafactor):
    r"""Adafactor: a factored second moment, update clipping and a relative step size.

    For each parameter :math:`\theta` with gradient :math:`G_t` at step :math:`t`
    (:math:`G_t \leftarrow -G_t` when ``maximize``), learning rate :math:`\gamma`, weight
    decay :math:`\lambda`, decay exponent :math:`\tau` (``beta2_decay``), clipping
    threshold :math:`d`, :math:`\mathrm{RMS}(x) = \lVert x\rVert_2 / \sqrt{\mathrm{numel}(x)}`:

    .. math::
        \hat\beta_t &= 1 - t^{\tau}, \qquad
            \alpha_t = \max\big(\epsilon_2, \mathrm{RMS}(\theta_{t-1})\big)
            \min\big(\gamma, 1/\sqrt t\big) \\
        \theta_{t-1} &\leftarrow (1 - \gamma\lambda)\,\theta_{t-1} \\
        R_t &= \hat\beta_t R_{t-1} + (1 - \hat\beta_t)\,\mathrm{mean}_{-1}(G_t^2), \quad
            C_t = \hat\beta_t C_{t-1} + (1 - \hat\beta_t)\,\mathrm{mean}_{-2}(G_t^2) \\
        \hat V_t &= \frac{R_t C_t}{\max(\mathrm{mean}_{-2}(R_t), \epsilon_1)}
            \quad\text{(2 or more dims; else }
            \hat V_t = \hat\beta_t \hat V_{t-1} + (1 - \hat\beta_t)\, G_t^2\text{)} \\
        U_t &= G_t / \max\big(\sqrt{\hat V_t}, \epsilon_1\big), \qquad
            \theta_t = \theta_{t-1} - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U_t)/d)}\, U_t

    with :math:`R_0 = C_0 = \hat V_0 = 0`; :math:`\epsilon_1` = None means the machine
    epsilon of one dtype per group, as torch: the first param's (on the multi-tensor path,
    the first (device, dtype) batch's). State keys: ``step``, and ``row_var`` (:math:`R`,
    last dim reduced to 1) and ``col_var`` (:math:`C`, second-to-last dim reduced to 1)
    for params of two or more dims, ``variance`` (:math:`\hat V`) for the others.

    Args: as :class:`torch.optim.Adafactor` -- ``lr`` (float or one-element Tensor),
    ``beta2_decay``, ``eps`` (``(eps1, eps2)``, eps1 may be None), ``d``, ``weight_decay``,
    and keyword-only ``foreach`` (the multi-tensor form only when True, as torch: it holds a
    second copy of the updates), ``maximize`` -- plus ``fused`` (keyword-only, last), which
    torch's Adafactor lacks. No complex params and no sparse gradients (RuntimeError).
    """

    _Tensors = AdafactorTensors
    _HP = AdafactorHP

    def _forms(self) -> Forms:
        # looked up at each step, so a test can spy on a form by its module name. The
        # fused checks hold each state to the shape its param gives it (_STATE_SHAPES)
        return Forms(
            _single_tensor_adafactor, _multi_tensor_adafactor, _c_args, "adafactor",
            shape_of=_STATE_SHAPES,
        )  # fmt: skip

    def __init__(
        self, params: ParamsT, lr: float | Tensor = 1e-2, beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0,
        weight_decay: float = 0.0, *, foreach: bool | None = None, maximize: bool = False,
        fused: bool | None = None,
    ) -> None:  # fmt: skip
        check_hparams(lr=lr)
        if not beta2_decay <= 0.0:
            raise ValueError(f"Invalid beta2_decay value: {beta2_decay} (it must be <= 0)")
        if eps[0] is not None:
            check_nonnegative("epsilon1 value", eps[0])
        check_nonnegative("epsilon2 value", eps[1])
        if not d >= 1.0:
            raise ValueError(f"Invalid clipping threshold d: {d} (it must be >= 1)")
        check_hparams(weight_decay=weight_decay)
        defaults = {
            "lr": lr, "beta2_decay": beta2_decay, "eps": eps, "d": d,
            "weight_decay": weight_decay, "foreach": foreach, "maximize": maximize,
        }  # fmt: skip
        self._setup(params, defaults, fused_beyond_torch=fused)

    def _new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        # shaped from the gradient, in torch's key order
        grad = p.grad
        assert grad is not None
        state = {"step": self._new_step(p, group)}
        if grad.dim() > 1:
            state["row_var"] = grad.new_zeros((*grad.shape[:-1], 1))
            state["col_var"] = grad.new_zeros((*grad.shape[:-2], 1, grad.shape[-1]))
        else:
            state["variance"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
        return state

    def _init_group(  # type: ignore[override]  # returns the base's (sparse, complex) pair
        self, group: dict[str, Any], params: list[Any], grads: list[Any], row_vars: list[Any],
        col_vars: list[Any], variances: list[Any], steps: list[Any],
    ) -> tuple[bool, bool]:  # fmt: skip
        """Gather each param with a gradient, its gradient and state (``None`` for the
        factors it does not keep), creating the state on its first step."""
        for p in group["params"]:
            if p.grad is None:
                continue
            if torch.is_complex(p):
                raise RuntimeError("Adafactor does not support complex params")
            if p.grad.is_sparse:
                raise RuntimeError("Adafactor does not support sparse gradients")
            if group.get("fused"):
                check_fused_param(p)
            params.append(p)
            grads.append(p.grad)
            state = self.state.get(p)
            if not state:
                state = self.state[p] = self._new_state(p, group)
            if group.get("fused"):  # refused before any work, as the fused checks are
                need = ("row_var", "col_var") if p.grad.dim() > 1 else ("variance",)
                for key in need:
                    if state.get(key) is None:
                        raise AssertionError(_MISSING.format(f"'{key}'", len(params) - 1))
            row_vars.append(state.get("row_var"))
            col_vars.append(state.get("col_var"))
            variances.append(state.get("variance"))
            steps.append(state["step"])
        return False, False

    def _path(self, group: dict[str, Any], params: TensorList) -> str:
        # torch keeps Adafactor on the per-tensor loop unless foreach=True, on every device
        foreach = bool(group["foreach"])
        return choose_path(params, foreach=foreach, fused=group.get("fused"), differentiable=False)

    def _hparams(self, group: dict[str, Any], **flags: bool) -> AdafactorHP:
        eps1, eps2 = group["eps"]
        if eps1 is None and group.get("fused"):  # the dtype of the first param, not widened
            first = next((p for p in group["params"] if p.grad is not None), None)
            eps1 = torch.finfo(first.dtype).eps if first is not None else None
        return AdafactorHP(
            squeeze_scalar(group["lr"]), group["beta2_decay"], eps1, eps2, group["d"],
            group["weight_decay"], group["maximize"],
        )  # fmt: skip


_MISSING = "state {} of parameter {} is missing: a checkpoint that does not fit the params?"

#: the state a param of a given shape keeps, and its shape: the factors for two or more dims
#: (its last dim, or its second-to-last, reduced to 1), the plain variance for the others
_STATE_SHAPES = {
    "row_var": lambda s: (*s[:-1], 1) if len(s) > 1 else None,
    "col_var": lambda s: (*s[:-2], 1, s[-1]) if len(s) > 1 else None,
    "variance": lambda s: None if len(s) > 1 else tuple(s),
}


def _rms(x: Tensor) -> float:
    return float(x.norm(2).item() / (x.numel() ** 0.5))


def _single_tensor_adafactor(t: AdafactorTensors, hp: AdafactorHP) -> None:
    """Per-tensor loop: the factored (or plain) second moment, then the clipped step."""
    if not t.param:
        return
    lr = hp.lr
    # one eps1 for the group: the first param's dtype decides, as torch's loop does
    eps1 = hp.eps1 if hp.eps1 is not None else torch.finfo(t.param[0].dtype).eps
    for i, param in enumerate(t.param):
        grad = -t.grad[i] if hp.maximize else t.grad[i]
        t.step[i] += 1
        n = t.step[i].item()
        one_minus_beta2 = n**hp.beta2_decay
        rho = min(lr, 1 / (n**0.5))  # a Tensor lr stays a tensor, as torch keeps it
        alpha = max(hp.eps2, _rms(param)) * rho
        if hp.weight_decay != 0:
            param.mul_(1 - lr * hp.weight_decay)
        row_var, col_var, variance = t.row_var[i], t.col_var[i], t.variance[i]
        if grad.dim() > 1:
            if row_var is None or col_var is None:
                raise AssertionError(_MISSING.format("'row_var' or 'col_var'", i))
            # mean of squares along a dim, as a norm: no squared copy of the gradient
            row_mean = torch.norm(grad, dim=-1, keepdim=True).square_().div_(grad.size(-1))
            row_var.lerp_(row_mean, one_minus_beta2)
            col_mean = torch.norm(grad, dim=-2, keepdim=True).square_().div_(grad.size(-2))
            col_var.lerp_(col_mean, one_minus_beta2)
            v_hat = row_var @ col_var
            v_hat.div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1))
        else:
            if variance is None:
                raise AssertionError(_MISSING.format("'variance'", i))
            variance.lerp_(grad * grad, one_minus_beta2)
            v_hat = variance.clone()
        # max(sqrt(v), eps1) as 1 / sqrt(max(v, eps1^2)), times the gradient
        update = v_hat.clamp_(min=eps1 * eps1).rsqrt_().mul_(grad)
        clip = max(1.0, update.norm(2).item() / ((update.numel() ** 0.5) * hp.d))
        param.add_(update, alpha=-alpha / clip)


def _c_args(t: AdafactorTensors, hp: AdafactorHP) -> CArgs:
    """The C kernel's options (with each param's last two dims, which tell it the factored
    ones) and per tensor 1 - beta2_t and rho_t, from the counters already advanced; the
    kernel forms alpha_t and the clipping from the norms it takes in its sweeps."""
    lr, eps1 = plain_value(hp.lr), hp.eps1
    assert eps1 is not None  # fused groups fix it from the first param's dtype (_hparams)
    dims: list[int] = []
    one_minus_beta2, rho = [], []
    for p, s in zip(t.param, t.step, strict=True):
        if p.numel() == 0:  # the param's RMS is 0 / 0, which Python refuses, as torch's step
            raise ZeroDivisionError(f"Adafactor: parameter of shape {tuple(p.shape)} is empty")
        dims += p.shape[-2:] if p.dim() > 1 else (0, 0)
        n = plain_value(s)
        one_minus_beta2.append(n**hp.beta2_decay)
        rho.append(min(lr, 1 / (n**0.5)))
    opts = cpu_fused.AdafactorOpts(
        eps1=eps1, eps1sq=eps1 * eps1, eps2=hp.eps2, d=hp.d, maximize=hp.maximize,
        shrink=1 - lr * hp.weight_decay if hp.weight_decay != 0 else 1.0,
        dims=(ctypes.c_int64 * len(dims))(*dims),
    )  # fmt: skip
    return CArgs(opts, [one_minus_beta2, rho])


def _batches(t: AdafactorTensors) -> list[tuple[bool, AdafactorTensors]]:
    """Per (device, dtype) batch, split into the factored params (2 or more dims: True)
    and the others, so that each batch holds one kind of state."""
    out = []
    for lists, _ in group_by_device_and_dtype(list(t)).values():
        kinds: dict[bool, list[list[Any]]] = {}
        for j, grad in enumerate(lists[1]):
            kind = kinds.setdefault(grad.dim() > 1, [[] for _ in lists])
            for dst, src in zip(kind, lists, strict=True):
                dst.append(src[j])
        out += [(factored, AdafactorTensors(*ls)) for factored, ls in kinds.items()]
    return out


def _multi_tensor_adafactor(t: AdafactorTensors, hp: AdafactorHP) -> None:
    """``torch._foreach_*`` over each (device, dtype, factored or not) batch."""
    if not foreach_ready(t, hp):
        return
    lr, eps1 = hp.lr, hp.eps1
    for factored, b in _batches(t):
        if eps1 is None:  # one for the group: the first batch's dtype decides, as in torch
            eps1 = torch.finfo(b.param[0].dtype).eps
        grads = list(torch._foreach_neg(b.grad)) if hp.maximize else b.grad
        add_one_to_steps(b.step)
        ns = [s.item() for s in b.step]
        one_minus_beta2 = [n**hp.beta2_decay for n in ns]
        alphas = [
            max(hp.eps2, _rms(p)) * min(lr, 1 / (n**0.5)) for p, n in zip(b.param, ns, strict=True)
        ]
        if hp.weight_decay != 0:
            torch._foreach_mul_(b.param, 1 - lr * hp.weight_decay)
        if factored:
            row_vars: Any = b.row_var
            col_vars: Any = b.col_var
            if row_vars[0] is None or col_vars[0] is None:
                raise AssertionError(_MISSING.format("'row_var' or 'col_var'", "0 of a batch"))
            for dim, factor in ((-1, row_vars), (-2, col_vars)):
                means = [torch.norm(g, dim=dim, keepdim=True) for g in grads]
                torch._foreach_mul_(means, means)
                torch._foreach_div_(means, [g.size(dim) for g in grads])
                torch._foreach_lerp_(factor, means, one_minus_beta2)
            v_hat = [r @ c for r, c in zip(row_vars, col_vars, strict=True)]
            r_means = [r.mean(dim=-2, keepdim=True) for r in row_vars]
            torch._foreach_clamp_min_(r_means, eps1)
            torch._foreach_div_(v_hat, r_means)
        else:
            variances: Any = b.variance
            if variances[0] is None:
                raise AssertionError(_MISSING.format("'variance'", "0 of a batch"))
            torch._foreach_lerp_(variances, torch._foreach_mul(grads, grads), one_minus_beta2)
            v_hat = [v.clone() for v in variances]
        torch._foreach_clamp_min_(v_hat, eps1 * eps1)
        torch._foreach_rsqrt_(v_hat)
        torch._foreach_mul_(v_hat, grads)
        sizes = [
            -a / max(1.0, u.norm(2).item() / ((u.numel() ** 0.5) * hp.d))
            for a, u in zip(alphas, v_hat, strict=True)
        ]
        torch._foreach_mul_(v_hat, sizes)
        torch._foreach_add_(b.param, v_hat)
