"""Multi-class hinge losses: ``multi_margin_loss`` (one target class per sample, Weston &
Watkins 1999) and ``multilabel_margin_loss`` (a set of target classes per sample).

torch computes both in dedicated kernels with their own backward. Here the per-sample terms
are formed for all classes at once from elementary ops (a gather of the target scores, the
margins, a mask of the active hinges) and an autograd Function gives torch's gradient: the
hinge's slope exactly where the margin is violated (z > 0, not at z = 0), each sample's
terms summed in the input's dtype (``multi_margin``) or in the accumulation type
(``multilabel_margin``) as torch's CPU kernels do. The backward is elementary ops again, so
double backward follows. Under ``torch.func`` transforms and forward-mode AD (which torch's
kernels lack) the same terms are summed as a composite autograd can follow.

Under ``torch.autocast`` both are fp32 on CPU and CUDA (see :mod:`._autocast`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from reimpl.nn.functional import _autocast, _reduction
from reimpl.nn.functional._common import check_not_differentiable as _check_not_differentiable
from reimpl.nn.functional._common import compiling as _compiling
from reimpl.nn.functional._common import to_dtype as _to_dtype
from reimpl.nn.functional._common import transformed as _transformed
from reimpl.nn.functional._common import vmapped as _vmapped


def _acc_dtype(x: Tensor) -> torch.dtype:
    """torch's accumulation type for a kernel on x's device: double for float on CPU."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return torch.float64 if x.device.type == "cpu" else x.dtype


def _frames(name: str, input: Tensor) -> tuple[int, int]:
    """(samples, classes): a 0-D input is one sample of one class, a 1-D one one sample."""
    ndim = input.dim()
    if not (ndim == 0 or (ndim in (1, 2) and input.size(-1) != 0)):
        raise RuntimeError(
            f"{name} takes a non-empty (C) vector or an (N, C) matrix with C > 0 (N may be "
            f"0), got an input of size {tuple(input.shape)}"
        )
    if ndim <= 1:
        return 1, input.numel() if ndim else 1
    return input.size(0), input.size(1)


def _check_index_dtype(name: str, target: Tensor) -> None:
    if target.dtype != torch.int64:
        raise RuntimeError(f"{name} takes an int64 (long) target, got {target.dtype}")


def _check_range(name: str, target: Tensor, low: int, high: int) -> None:
    # a host read: skipped where it cannot run (torch.compile, vmap)
    if _compiling() or _vmapped() or target.numel() == 0:
        return
    if int(target.min()) < low or int(target.max()) >= high:
        raise RuntimeError(f"{name}: target values must lie in [{low}, {high}), got one outside")


def _reduce(
    per_sample: Tensor, reduction: str, n: int, acc: torch.dtype, dtype: torch.dtype
) -> Tensor:
    """Mean or sum of the per-sample terms in the accumulation type, rounded once."""
    total = per_sample.to(acc).sum()
    if reduction == "mean":
        total = total / n
    return _to_dtype(total, dtype)


# --------------------------------------------------------------------------- multi margin


class _MultiMarginTerms(NamedTuple):
    z: Tensor  # (N, C): margin - x[y] + x[i]
    active: Tensor  # (N, C): the hinge is violated (z > 0) and i is not the target
    is_target: Tensor  # (N, C): i == y
    w: Tensor | None  # (N, 1): weight[y]


def _multi_margin_terms(
    x: Tensor, y: Tensor, margin: float, weight: Tensor | None
) -> _MultiMarginTerms:
    # torch rounds the margin into the input's dtype first
    margin = float(torch.tensor(margin, dtype=x.dtype))
    classes = torch.arange(x.size(1), device=x.device)
    is_target = classes == y.unsqueeze(1)
    z = (margin - x.gather(1, y.unsqueeze(1))) + x
    w = None if weight is None else weight[y].unsqueeze(1)
    return _MultiMarginTerms(z, (z > 0) & ~is_target, is_target, w)


def _multi_margin_per_sample(
    x: Tensor, y: Tensor, p: int, margin: float, weight: Tensor | None
) -> Tensor:
    """sum_{i != y, z_i > 0} w_y z_i^p / C per sample, summed in x's dtype (torch's kernel)."""
    terms = _multi_margin_terms(x, y, margin, weight)
    h = terms.z if p == 1 else terms.z * terms.z
    if terms.w is not None:
        h = h * terms.w
    return torch.where(terms.active, h, 0).sum(1) / x.size(1)


class _MultiMargin(torch.autograd.Function):
    """Per sample (scores x, target y): l = sum_{i != y} w_y max(0, margin - x_y + x_i)^p / C

    dl/dx_i = w_y g_p(z_i)  for i != y with z_i > 0,  dl/dx_y = -sum of those,
    g_1 = 1 / C,  g_2 = 2 z_i / C  (1 / (N C) for the mean), times the upstream gradient.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, y: Tensor, weight: Tensor | None, p: int, margin: float,
        reduction: str, scalar_out: bool,
    ) -> Tensor:  # fmt: skip
        ctx.save_for_backward(x, y, weight)
        ctx.p, ctx.margin, ctx.reduction = p, margin, reduction
        per = _multi_margin_per_sample(x, y, p, margin, weight)
        if reduction == "none":
            return per.reshape(()) if scalar_out else per
        return _reduce(per, reduction, x.size(0), _acc_dtype(x), x.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, y, weight = ctx.saved_tensors
        n, c = x.shape
        # torch's step, in double, then rounded into the input's dtype
        step = 1.0 / (n * c) if ctx.reduction == "mean" else 1.0 / c
        step_t = torch.tensor(step, dtype=x.dtype, device=x.device)
        terms = _multi_margin_terms(x, y, ctx.margin, weight)
        h = step_t.expand_as(x) if ctx.p == 1 else (2 * step_t) * terms.z
        if terms.w is not None:
            h = h * terms.w
        h = torch.where(terms.active, h, 0)
        gx = torch.where(terms.is_target, -h.sum(1, keepdim=True), h)
        upstream = g.reshape(-1, 1) if g.dim() else g
        return gx * upstream, None, None, None, None, None, None


def multi_margin_loss(
    input: Tensor, target: Tensor, p: int = 1, margin: float = 1.0, weight: Tensor | None = None,
    size_average: bool | None = None, reduce: bool | None = None, reduction: str = "mean",
) -> Tensor:  # fmt: skip
    """Multi-class hinge (Weston & Watkins): per sample, the mean over classes i != y of
    w_y max(0, margin - x_y + x_i)^p, p in {1, 2}; ``weight`` one per class."""
    reduction = _reduction.resolve_enum(reduction, size_average, reduce)
    if p not in (1, 2):
        raise ValueError(f"multi_margin_loss supports p = 1 and p = 2, got p={p}")
    if weight is not None and weight.dim() != 1:
        raise ValueError(
            f"multi_margin_loss takes a 1-D weight (one per class), got a {weight.dim()}-D one"
        )
    return _autocast.run_fp32(  # fp32 policy on CPU and CUDA
        input, _multi_margin_loss, input, target, weight, int(p), margin, reduction
    )


def _multi_margin_loss(
    input: Tensor, target: Tensor, weight: Tensor | None, p: int, margin: float, reduction: str
) -> Tensor:
    name = "multi_margin_loss"
    _check_not_differentiable(name, weight=weight)
    n, c = _frames(name, input)
    if target.dim() > 1 or target.numel() != n:
        raise RuntimeError(
            f"{name}: the target holds one class index per sample: expected {n} in a 0-D or "
            f"1-D tensor, got size {tuple(target.shape)} for an input of size "
            f"{tuple(input.shape)}"
        )
    if weight is not None and weight.numel() != c:
        raise RuntimeError(f"{name}: weight has {weight.numel()} entries for {c} classes")
    if input.numel() == 0:  # (0, C): no samples
        return _empty_batch(input, reduction)
    # in torch's order: the kernel's dtype, then the target's and weight's, then the values
    if not input.is_floating_point():
        raise NotImplementedError(f"{name} is not implemented for {input.dtype} inputs")
    _check_index_dtype(name, target)
    if weight is not None and weight.dtype != input.dtype:
        raise RuntimeError(f"{name}: weight dtype {weight.dtype} differs from input {input.dtype}")
    _check_range(name, target, 0, c)
    scalar_out = target.dim() == 0
    x, y = input.reshape(n, c), target.reshape(n)
    if not _transformed():
        return _MultiMargin.apply(x, y, weight, p, margin, reduction, scalar_out)
    per = _multi_margin_per_sample(x, y, p, margin, weight)
    if reduction == "none":
        return per.reshape(()) if scalar_out else per
    return _reduce(per, reduction, n, _acc_dtype(x), x.dtype)


def _empty_batch(input: Tensor, reduction: str) -> Tensor:
    """An (0, C) input: torch leaves a reduced result unwritten (whatever the memory held);
    here the sum of nothing is 0 and its mean 0/0, as ``mean`` gives for the other losses."""
    if reduction == "none":
        return input.sum(1)
    total = input.sum()
    return total / 0 if reduction == "mean" else total


# --------------------------------------------------------------------------- multilabel


class _MultilabelTerms(NamedTuple):
    active: Tensor  # (N, S, C): slot j's target t_j against class i: z > 0, i not a target
    z: Tensor  # (N, S, C): 1 - x[t_j] + x[i]
    slot_class: Tensor  # (N, S, C): class i is slot j's target (j a listed slot)


def _multilabel_terms(x: Tensor, y: Tensor) -> _MultilabelTerms:
    """The target classes of a sample are y's entries up to the first -1 (a class listed
    twice counts twice); every pair (target t, non-target i) is a hinge 1 - x_t + x_i."""
    c = x.size(1)
    listed = (y >= 0).to(torch.int64).cumprod(1).bool()  # slots before the first -1
    index = y.clamp_min(0)
    classes = torch.arange(c, device=x.device)
    slot_class = (index.unsqueeze(2) == classes) & listed.unsqueeze(2)
    is_target = slot_class.any(1)
    z = (1 - x.gather(1, index)).unsqueeze(2) + x.unsqueeze(1)
    active = listed.unsqueeze(2) & ~is_target.unsqueeze(1) & (z > 0)
    return _MultilabelTerms(active, z, slot_class)


def _multilabel_per_sample(x: Tensor, y: Tensor) -> Tensor:
    """sum of the active hinges per sample, in the accumulation type (not yet / C)."""
    terms = _multilabel_terms(x, y)
    return torch.where(terms.active, terms.z, 0).to(_acc_dtype(x)).sum((1, 2))


class _MultilabelMargin(torch.autograd.Function):
    """Per sample: l = sum_{t in targets} sum_{i not a target} max(0, 1 - x_t + x_i) / C

    dl/dx_i = (number of active hinges with i as the non-target) / C, dl/dx_t = -(number
    with t as the target) / C (1 / (N C) for the mean), times the upstream gradient.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, y: Tensor, reduction: str, scalar_out: bool
    ) -> Tensor:
        ctx.save_for_backward(x, y)
        ctx.reduction = reduction
        return _multilabel_reduce(_multilabel_per_sample(x, y), x, reduction, scalar_out)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        x, y = ctx.saved_tensors
        n, c = x.shape
        step = 1.0 / (n * c) if ctx.reduction == "mean" else 1.0 / c
        step_t = torch.tensor(step, dtype=x.dtype, device=x.device)
        terms = _multilabel_terms(x, y)
        as_other = terms.active.sum(1)  # (N, C)
        as_target = (terms.slot_class * terms.active.sum(2, keepdim=True)).sum(1)
        gx = (as_other - as_target).to(x.dtype) * step_t
        upstream = g.reshape(-1, 1) if g.dim() else g
        return gx * upstream, None, None, None


def _multilabel_reduce(per: Tensor, x: Tensor, reduction: str, scalar_out: bool) -> Tensor:
    c = x.size(1)
    if reduction == "none" and not scalar_out:
        return _to_dtype(per, x.dtype) / c
    # reduced, or one sample (a 0-D/1-D input): torch divides in the accumulation type
    total = per.sum() / c
    if reduction == "mean":
        total = total / x.size(0)
    return _to_dtype(total, x.dtype)


def multilabel_margin_loss(
    input: Tensor, target: Tensor, size_average: bool | None = None, reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:  # fmt: skip
    """Multi-label hinge: per sample, the sum over target classes t (``target``'s entries
    up to the first -1) and non-target classes i of max(0, 1 - x_t + x_i), over C."""
    reduction = _reduction.resolve_enum(reduction, size_average, reduce)
    return _autocast.run_fp32(  # fp32 policy on CPU and CUDA
        input, _multilabel_margin_loss, input, target, reduction
    )


def _multilabel_margin_loss(input: Tensor, target: Tensor, reduction: str) -> Tensor:
    name = "multilabel_margin_loss"
    n, c = _frames(name, input)
    fits = (
        target.dim() <= 1 and target.numel() == c
        if input.dim() <= 1
        else target.shape == input.shape
    )
    if not fits:
        raise RuntimeError(
            f"{name}: the target lists class indices in a tensor of the input's size "
            f"{tuple(input.shape)}, got size {tuple(target.shape)}"
        )
    if input.numel() == 0:  # (0, C): no samples
        return _empty_batch(input, reduction)
    _check_range(name, target, -1, c)
    if not input.is_floating_point():
        raise NotImplementedError(f"{name} is not implemented for {input.dtype} inputs")
    _check_index_dtype(name, target)
    scalar_out = target.dim() <= 1
    x, y = input.reshape(n, c), target.reshape(n, c)
    if not _transformed():
        return _MultilabelMargin.apply(x, y, reduction, scalar_out)
    return _multilabel_reduce(_multilabel_per_sample(x, y), x, reduction, scalar_out)
