"""Connectionist temporal classification loss, written from elementary tensor ops.

Graves, Fernandez, Gomez & Schmidhuber (2006), "Connectionist Temporal Classification:
Labelling Unsegmented Sequence Data with Recurrent Neural Networks" (ICML), sec. 4.1-4.2.
The loss of a sample is ``-ln p(l | x)``: the probability of all alignments of the target
``l`` to the ``T`` outputs, summed by the forward recursion over the extended labels ``l'``
(notation in :mod:`._ctc_script`)::

    alpha_1(0) = y_blank^1,  alpha_1(1) = y_{l_1}^1
    alpha_t(s) = (alpha_{t-1}(s) + alpha_{t-1}(s-1) [+ alpha_{t-1}(s-2)]) y_{l'_s}^t
    p(l | x)   = alpha_T(|l'|-1) + alpha_T(|l'|-2)

in log space, one vectorized step per time step over the whole batch and every position
of ``l'`` (the loop is over time only), with the max-shifted log-sum-exp torch's kernel uses.

Why a custom autograd Function, and not autograd through the recursion: the gradient torch
gives (and users train with) is not the derivative of the loss with respect to
``log_probs``. It is eq. (16) of the paper, the derivative with respect to the
*unnormalized* outputs of a softmax whose log is ``log_probs``::

    grad[t, k] = y_k^t - exp(ln sum_{s: l'_s = k} alpha_t(s) beta_t(s) + loss - ln y_k^t)

the two agree once the gradient has gone back through a log-softmax. The backward computes
``beta`` by the mirrored recursion and collects ``alpha beta`` per class in log space, as
torch does, so the same inputs give the same numbers -- also where torch's formula gives
nan (a ``log_probs`` entry of -inf, or an infinite loss without ``zero_infinity``).
Double backward raises, as torch's does (its backward has no derivative); forward-mode AD
raises NotImplementedError, as torch's. ``torch.func.vmap`` folds its batch into the
samples; ``grad``/``jacrev`` use the backward.

torch's kernels exist for float32 and float64 only (other dtypes raise NotImplementedError).
Under CPU ``torch.autocast`` the loss runs in float32 (torch's CPU fp32 list); CUDA's
autocast does not list it, so it runs on its inputs as they are (see :mod:`._autocast`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from reimpl.nn.functional import _autocast, _reduction
from reimpl.nn.functional import _ctc_script as S
from reimpl.nn.functional._common import compiling

NEG_INF = -math.inf


def ctc_loss(
    log_probs: Tensor, targets: Tensor, input_lengths: Tensor | Sequence[int],
    target_lengths: Tensor | Sequence[int], blank: int = 0, reduction: str = "mean",
    zero_infinity: bool = False,
) -> Tensor:  # fmt: skip
    """The CTC loss of ``log_probs`` (T, N, C) or (T, C) against padded (N, S) or
    concatenated targets; 'mean' divides each loss by its target length (at least 1), then
    averages over the batch. ``zero_infinity`` replaces infinite losses (no alignment
    exists, e.g. a target longer than its input) and their gradients by zero."""
    _reduction.check(reduction)
    if not isinstance(log_probs, Tensor) or not isinstance(targets, Tensor):
        raise TypeError(
            f"ctc_loss: log_probs and targets must be tensors, got "
            f"{type(log_probs).__name__} and {type(targets).__name__}"
        )
    args = (log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity)
    return _autocast.run(log_probs, _ctc_autocast, *args)


def _ctc_autocast(
    log_probs: Tensor, targets: Tensor, input_lengths: Any, target_lengths: Any, blank: int,
    reduction: str, zero_infinity: bool, autocast: str | None,
) -> Tensor:  # fmt: skip
    """torch's autocast policy: fp32 under CPU autocast (its floating-point tensors to
    float32); under CUDA autocast, not listed: the inputs as they are."""
    if autocast == "cpu":
        log_probs, targets = _autocast.fp32(autocast, log_probs), _autocast.fp32(autocast, targets)
    return _ctc_loss(
        log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity
    )


def _lengths(input_lengths: Any, target_lengths: Any) -> tuple[Tensor, Tensor]:
    """Both lengths as tensors of integers, or both as tuples/lists of ints (torch's two
    overloads; a mix, floats or bools are refused with TypeError), as tensors. Not read
    on the host here: under ``vmap`` they may be batched (the Function reads them)."""
    if isinstance(input_lengths, Tensor) and isinstance(target_lengths, Tensor):
        S.check_lengths_dtype(input_lengths, "input_lengths")
        S.check_lengths_dtype(target_lengths, "target_lengths")
        return input_lengths, target_lengths
    if isinstance(input_lengths, (tuple, list)) and isinstance(target_lengths, (tuple, list)):
        il = _ints(input_lengths, "input_lengths")
        tl = _ints(target_lengths, "target_lengths")
        return torch.tensor(il, dtype=torch.long), torch.tensor(tl, dtype=torch.long)
    raise TypeError(
        "ctc_loss: input_lengths and target_lengths must both be integer tensors or both "
        f"tuples/lists of ints, got {type(input_lengths).__name__} and "
        f"{type(target_lengths).__name__}"
    )


def _ints(values: Sequence[Any], name: str) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, bool) or (isinstance(v, Tensor) and v.dtype == torch.bool):
            raise TypeError(f"ctc_loss: {name} must hold ints, got a bool")
        try:
            out.append(operator.index(v))
        except TypeError:
            raise TypeError(
                f"ctc_loss: {name} must hold ints, got {type(v).__name__} {v!r}"
            ) from None
    return out


def _ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Any,
    target_lengths: Any,
    blank: int,
    reduction: str,
    zero_infinity: bool,
) -> Tensor:
    il, tl = _lengths(input_lengths, target_lengths)
    lp3 = S.batched_log_probs(log_probs)
    nll = _CTC.apply(lp3, targets, il, tl, blank, zero_infinity)[0]
    return S.reduce(nll, tl, reduction, zero_infinity, log_probs.dim() == 3)


def _prepare(
    lp3: Tensor, targets: Tensor, il_t: Tensor, tl_t: Tensor, blank: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, int]:
    """The host side: torch's checks on the lengths (read here, as torch reads them), the
    labels' range, and the extended labels with their skip masks. Returns (ext, from_back,
    to_front, il, tl on the device, t_max)."""
    il: list[int] = il_t.reshape(-1).tolist()
    tl: list[int] = tl_t.reshape(-1).tolist()
    s_max = S.check_arguments(lp3, targets, il, tl, blank)
    labels, inside = S.target_labels(targets, tl, s_max, blank, lp3.device)
    if not compiling():  # a host read of the labels
        S.check_label_range(labels[inside], lp3.size(2))
    ext, from_back, to_front = S.extended_labels(labels, blank)
    device = lp3.device
    il_d = torch.tensor(il, dtype=torch.long, device=device)
    tl_d = torch.tensor(tl, dtype=torch.long, device=device)
    return ext, from_back, to_front, il_d, tl_d, max(il)


# --------------------------------------------------------------------------- recursions


def _step(x: Tensor, lp_t: Tensor, out: Tensor) -> None:
    """``out = ln(sum_k exp(x_k)) + lp_t`` over dim 0 of ``x`` (3, N, L), shifted by the
    max (0 where the max is -inf), in place to spare allocations in the time loop."""
    m = x.amax(0).nan_to_num_(nan=0.0, posinf=math.inf, neginf=0.0)
    torch.sum(x.sub_(m).exp_(), 0, out=out)
    out.log_().add_(m).add_(lp_t)


def _alpha(lpe: Tensor, from_back: Tensor, t_max: int) -> Tensor:
    """ln alpha (t_max, N, 2 + L): two leading columns of -inf stand for s - 1, s - 2 < 0."""
    _, n, n_ext = lpe.shape
    alpha = lpe.new_full((t_max, n, n_ext + 2), NEG_INF)
    s = torch.arange(n_ext, device=lpe.device)
    alpha[0, :, 2:] = torch.where(s < 2, lpe[0], NEG_INF)
    gate = S.windows(from_back, 0)  # the s - 2 term only where l'_s != l'_{s-2}
    neg_inf = lpe.new_full((), NEG_INF)
    for t in range(1, t_max):
        x = torch.where(gate, S.shifted3(alpha[t - 1]), neg_inf)
        _step(x, lpe[t], alpha[t, :, 2:])
    return alpha


def _beta(lpe: Tensor, to_front: Tensor, il: Tensor, tl: Tensor, t_max: int) -> Tensor:
    """ln beta (t_max, N, L) by the mirrored recursion (eqs. 10-11), started per sample at
    its last time step ``il - 1`` from its last two positions; -inf past ``2 tl`` and past
    the sample's length, so that nothing outside its lattice leaks into the sums."""
    _, n, n_ext = lpe.shape
    s = torch.arange(n_ext, device=lpe.device)
    t = torch.arange(t_max, device=lpe.device).view(-1, 1, 1)
    last_t = (il - 1).view(1, -1, 1)
    ends = ((s == 2 * tl.unsqueeze(1)) | (s == 2 * tl.unsqueeze(1) - 1)).unsqueeze(0)
    start = torch.where(ends & (t == last_t), lpe, NEG_INF)
    recur = (s <= 2 * tl.unsqueeze(1)).unsqueeze(0) & (t < last_t)
    beta = lpe.new_full((t_max, n, n_ext + 2), NEG_INF)  # two trailing -inf: s + 1, s + 2
    beta[t_max - 1, :, :n_ext] = start[t_max - 1]
    gate = S.windows(to_front, 2)  # the s + 2 term only where l'_{s+2} != l'_s
    neg_inf = lpe.new_full((), NEG_INF)
    rec = lpe.new_empty((n, n_ext))
    for step in range(t_max - 2, -1, -1):
        x = torch.where(gate, S.shifted3(beta[step + 1]), neg_inf)
        _step(x, lpe[step], rec)
        torch.where(recur[step], rec, start[step], out=beta[step, :, :n_ext])
    return beta[:, :, :n_ext]


def _nll(alpha: Tensor, il: Tensor, tl: Tensor) -> Tensor:
    """-ln(alpha_T(2|l|) + alpha_T(2|l| - 1)) at each sample's own last step (eq. 8);
    an empty input has probability 1 for an empty target, 0 otherwise."""
    n = alpha.size(1)
    last = alpha[(il - 1).clamp_min(0), torch.arange(n, device=alpha.device)]
    ends = last.gather(1, torch.stack([2 * tl + 2, 2 * tl + 1, torch.zeros_like(tl)], 1))
    ll = torch.where(tl == 0, ends[:, 0], S.log_sum_exp3(ends.t()))  # column 0: a -inf pad
    empty = torch.where(tl == 0, 0.0, NEG_INF).to(alpha.dtype)
    return -torch.where(il == 0, empty, ll)


def _log_add(acc: Tensor, x: Tensor) -> Tensor:
    """ln(exp(acc) + exp(x)) shifted by the larger, as torch adds one term to a class sum
    (``x`` itself while the sum is still empty, -inf)."""
    m = torch.maximum(acc, x)
    summed = (acc - m).exp_().add_((x - m).exp_()).log_().add_(m)
    return torch.where(acc == NEG_INF, x, summed)


def _collect(ab: Tensor, ext: Tensor, tl: Tensor, n_classes: int) -> Tensor:
    """ln sum_{s: l'_s = k} exp(ab[t, n, s]) for every class k (t_max, N, C): eq. (16)'s
    sum, -inf for a class at no position. Accumulated as torch does -- position by
    position from the last, two terms at a time, each shifted by their max -- so a class
    met at several positions (the blank, a repeated label) rounds as in torch.

    The blank's sum runs over the even positions, one vectorized step each. A label's
    positions are taken by their rank among the equal labels from the end: all rank-0
    positions (distinct classes within a sample) in one step, then rank 1, ... -- as many
    steps as a label repeats, not one per position. A target holding the blank itself
    interleaves the two, and takes the position-by-position loop."""
    t_max, n, _ = ab.shape
    blank = int(ext[0, 0]) if n else 0
    labels = ext[:, 1::2]
    inside = torch.arange(labels.size(1), device=ext.device) < tl.unsqueeze(1)
    if bool((inside & (labels == blank)).any()):
        return _collect_by_position(ab, ext, n_classes)
    out = ab.new_full((t_max, n, n_classes + 1), NEG_INF)  # column C: where others go
    by_position = ab[:, :, ::2].permute(2, 0, 1).contiguous()  # the blank's, (S + 1, T, N)
    acc = by_position[-1]
    for s in range(by_position.size(0) - 2, -1, -1):
        acc = _log_add(acc, by_position[s])
    out[:, :, blank] = acc
    later_equal = (labels.unsqueeze(2) == labels.unsqueeze(1)).triu(1) & inside.unsqueeze(1)
    rank = later_equal.sum(2)
    for r in range(int(rank.max()) + 1 if labels.numel() else 0):
        take = inside & (rank == r)
        cols = take.any(0).nonzero().squeeze(1)  # the target positions that have rank r
        take, x = take[:, cols], ab[:, :, 1 + 2 * cols]
        index = torch.where(take, labels[:, cols], n_classes).unsqueeze(0).expand_as(x)
        out.scatter_(2, index, _log_add(out.gather(2, index), torch.where(take, x, NEG_INF)))
    return out[:, :, :n_classes]


def _collect_by_position(ab: Tensor, ext: Tensor, n_classes: int) -> Tensor:
    """:func:`_collect` one position at a time, from the last (any target)."""
    t_max, n, n_ext = ab.shape
    out = ab.new_full((t_max, n, n_classes), NEG_INF)
    for s in range(n_ext - 1, -1, -1):
        index = ext[:, s].view(1, n, 1).expand(t_max, n, 1)
        out.scatter_(2, index, _log_add(out.gather(2, index).squeeze(2), ab[:, :, s]).unsqueeze(2))
    return out


def _visited(ext: Tensor, il: Tensor, tl: Tensor, t_max: int) -> Tensor:
    """(t_max, N, L): the (t, s) whose alpha beta torch's kernel adds to its class sum --
    s <= 2 tl before the sample's last step; at the last step the two end positions, the
    label's replacing the blank's when the target's last label is the blank itself."""
    n_ext = ext.size(1)
    s = torch.arange(n_ext, device=ext.device)
    t = torch.arange(t_max, device=ext.device).view(-1, 1, 1)
    last_t, end = (il - 1).view(1, -1, 1), (2 * tl).view(-1, 1)
    blank_label = (tl > 0) & (ext.gather(1, (end - 1).clamp_min(0)).squeeze(1) == ext[:, 0])
    ends = (s == end - 1) | ((s == end) & ~blank_label.unsqueeze(1))
    return ((t < last_t) & (s <= end).unsqueeze(0)) | ((t == last_t) & ends.unsqueeze(0))


def _grad(
    lp3: Tensor, ext: Tensor, to_front: Tensor, il: Tensor, tl: Tensor, nll: Tensor,
    alpha: Tensor, grad_nll: Tensor, t_max: int, zero_infinity: bool,
) -> Tensor:  # fmt: skip
    """eq. (16) for every (t, n, k), times the incoming gradient of each sample's loss;
    zero past each sample's length and, with ``zero_infinity``, for infinite losses."""
    if t_max == 0:
        return torch.zeros_like(lp3)
    lp = lp3[:t_max]
    lpe = lp.gather(2, ext.unsqueeze(0).expand(t_max, -1, -1))
    beta = _beta(lpe, to_front, il, tl, t_max)
    live = torch.arange(t_max, device=lp3.device).view(-1, 1) < il  # (t_max, N)
    ab = torch.where(_visited(ext, il, tl, t_max), alpha[:, :, 2:] + beta, NEG_INF)
    collected = _collect(ab, ext, tl, lp3.size(2))
    loss = nll.view(1, -1, 1)
    grad = (lp.exp() - (collected + loss - lp).exp()) * grad_nll.view(1, -1, 1)
    keep = live.unsqueeze(2)
    if zero_infinity:
        keep = keep & (loss != math.inf)
    grad = torch.where(keep, grad, 0.0)
    rest = lp3.new_zeros((lp3.size(0) - t_max, *lp3.shape[1:]))
    return torch.cat([grad, rest])


def _fold(batch: int, x: Tensor, dim: int | None, sample_dim: int) -> Tensor:
    """A vmapped ``x`` with its vmap dim (None: unbatched, expanded) merged into its sample
    dim, vmap index outermost: B calls on N samples become one call on B * N samples."""
    x = x.unsqueeze(0).expand(batch, *x.shape) if dim is None else x.movedim(dim, 0)
    return x.movedim(0, sample_dim).flatten(sample_dim, sample_dim + 1)


def _fold_lengths(batch: int, x: Tensor, dim: int | None) -> Tensor:
    """Lengths of any shape (torch reads them flat) folded as :func:`_fold` does."""
    if dim is None:
        return _fold(batch, x.reshape(-1), None, 0)
    return _fold(batch, x.movedim(dim, 0).reshape(batch, -1), 0, 0)


def _no_forward_mode(*_: Any) -> Any:
    raise NotImplementedError(
        "ctc_loss has no forward-mode derivative (torch's has none either); "
        "use reverse mode (backward, torch.func.grad / jacrev)"
    )


class _CTCGrad(torch.autograd.Function):
    """The CTC gradient (:func:`_grad`) as a Function of its own: under ``vmap`` (also the
    vmap of ``vmap(grad(...))`` and ``jacrev``) its rule folds the batch into the samples,
    so the in-place recursions always run on plain tensors; differentiating it raises, as
    torch's CTC backward has no derivative either."""

    @staticmethod
    def forward(  # type: ignore[override]
        lp3: Tensor, ext: Tensor, to_front: Tensor, il: Tensor, tl: Tensor, nll: Tensor,
        alpha: Tensor, grad_nll: Tensor, t_max: int, zero_infinity: bool,
    ) -> Tensor:  # fmt: skip
        return _grad(lp3, ext, to_front, il, tl, nll, alpha, grad_nll, t_max, zero_infinity)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, *_: Any) -> Any:  # type: ignore[override]
        raise RuntimeError(
            "ctc_loss has no second derivative (torch's neither): its gradient comes from "
            "the alpha-beta recursion, which is not differentiated again"
        )

    jvp = staticmethod(_no_forward_mode)  # type: ignore[assignment]

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, ...], *args: Any) -> tuple[Tensor, int]:
        b = info.batch_size
        lp3, alpha = _fold(b, args[0], in_dims[0], 1), _fold(b, args[6], in_dims[6], 1)
        rest = [_fold(b, x, d, 0) for x, d in zip(args[1:6], in_dims[1:6], strict=True)]
        grad_nll = _fold(b, args[7], in_dims[7], 0)
        grad = _CTCGrad.apply(lp3, *rest, alpha, grad_nll, *args[8:])
        return grad.unflatten(1, (b, -1)), 1


class _CTC(torch.autograd.Function):
    """(loss per sample, ln alpha, l', the s + 2 mask) from (T, N, C) log-probabilities,
    targets and lengths; backward: eq. (16) as torch computes it (module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        lp3: Tensor, targets: Tensor, il_t: Tensor, tl_t: Tensor, blank: int, zero_infinity: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        ext, from_back, to_front, il, tl, t_max = _prepare(lp3, targets, il_t, tl_t, blank)
        if t_max == 0:  # every input is empty
            alpha = lp3.new_full((0, lp3.size(1), ext.size(1) + 2), NEG_INF)
            empty = torch.where(tl == 0, 0.0, NEG_INF).to(lp3.dtype)
            return -empty, alpha, ext, to_front
        lpe = lp3[:t_max].gather(2, ext.unsqueeze(0).expand(t_max, -1, -1))
        alpha = _alpha(lpe, from_back, t_max)
        return _nll(alpha, il, tl), alpha, ext, to_front

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        lp3, _, il_t, tl_t, _, zero_infinity = inputs
        nll, alpha, ext, to_front = output
        ctx.mark_non_differentiable(alpha, ext, to_front)
        ctx.save_for_backward(lp3, ext, to_front, il_t, tl_t, nll, alpha)
        ctx.zero_infinity = zero_infinity

    @staticmethod
    def backward(ctx: Any, grad_nll: Tensor, *_: Any) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        lp3, ext, to_front, il_t, tl_t, nll, alpha = ctx.saved_tensors
        il, tl = (x.reshape(-1).to(device=lp3.device, dtype=torch.long) for x in (il_t, tl_t))
        grad = _CTCGrad.apply(
            lp3, ext, to_front, il, tl, nll, alpha, grad_nll, alpha.size(0), ctx.zero_infinity
        )
        return (grad, *(None,) * 5)

    jvp = staticmethod(_no_forward_mode)  # type: ignore[assignment]

    @staticmethod
    def vmap(
        info: Any, in_dims: tuple[int | None, ...], lp3: Tensor, targets: Tensor,
        il_t: Tensor, tl_t: Tensor, blank: int, zero_infinity: bool,
    ) -> tuple[tuple[Tensor, ...], tuple[int, ...]]:  # fmt: skip
        """A vmapped batch of B calls is one call on B * N samples: log_probs, padded
        targets and lengths stack their samples; concatenated targets concatenate."""
        b = info.batch_size
        nll, alpha, ext, to_front = _CTC.apply(
            _fold(b, lp3, in_dims[0], 1),
            _fold(b, targets, in_dims[1], 0),
            _fold_lengths(b, il_t, in_dims[2]),
            _fold_lengths(b, tl_t, in_dims[3]),
            blank,
            zero_infinity,
        )
        nll, ext, to_front = (x.unflatten(0, (b, -1)) for x in (nll, ext, to_front))
        return (nll, alpha.unflatten(1, (b, -1)), ext, to_front), (0, 1, 0, 0)
