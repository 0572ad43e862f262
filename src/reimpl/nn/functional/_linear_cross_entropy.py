"""Linear layer + cross-entropy in row chunks: the (N, V) logits never exist at once.

For a language-model head the vocabulary V is far larger than the hidden size D, so the
logits ``x W^T + b`` (N x V) -- and the two or three logits-sized tensors torch's
``cross_entropy(linear(x, W, b), t)`` keeps for its backward -- dominate a training step's
memory. Here each chunk of rows computes its logits, their log-sum-exp, the loss and
d(loss)/d(logits), turns that into its share of the three gradients, and drops the chunk's
logits (Wijmans et al. 2024, "Cut Your Losses in Large-Vocabulary Language Models"; the
fused linear cross-entropy of Liger-Kernel, Hsu et al. 2024). The row step writes
d(loss)/d(logits) over the chunk's logits, which are dead by then, so the extra memory is
one chunk-sized buffer (by default the larger of the input's size and 64 MiB of float32
logits, see :func:`rows_per_chunk`; 16-bit inputs add a 16-bit one: the logits before
their float32 copy, then d(loss)/d(logits) rounded for the product with W) instead of
about 3 x N x V.

With z_n = W x_n + b, p = softmax(z_n) and dz_n = dloss_n/dz_n as in
:mod:`._cross_entropy_lean` (whose per-row step is shared here):

    grad_x_n = dz_n W,    grad_W = sum_n dz_n^T x_n,    grad_b = sum_n dz_n

* Scalar reductions ('mean', 'sum'): the upstream gradient is one number, so the forward
  pass forms all three gradients chunk by chunk (three matrix products per chunk, as the
  unfused forward + backward) and the backward only scales them. The buffers go to
  autograd on the first backward; a second backward through a retained graph recomputes.
* 'none': each row has its own upstream gradient; the forward computes only the losses and
  the backward recomputes each chunk's logits (four matrix products in all).
* 16-bit inputs: the logits are computed in the input's dtype (torch's linear), the
  cross-entropy and grad_W's accumulation across chunks in float32, the gradient of the
  logits rounded to the input's dtype before the products with W (torch's linear backward).
  CPU autocast is the same with the inputs cast to autocast's dtype (torch's policy: a
  lower-precision linear, a float32 cross-entropy) and a float32 result.
* Everything else -- class-probability targets, K-dimensional ``out_features``, uint8
  targets, empty inputs, CUDA autocast, ``torch.compile``, ``torch.func`` transforms,
  forward-mode AD, tracing, double backward -- runs the composite form: our linear (matmul)
  and our :func:`cross_entropy`, which is torch's reference definition.

Per chunk the three matrix products are torch matmuls (cuBLAS on CUDA); the row step is
chosen as for :func:`cross_entropy`'s lean path (``_cross_entropy_lean.rows_impl``): on CUDA
our Triton kernel (``reimpl.kernels.triton_cross_entropy``: one program per row, an online
softmax over blocks, the loss and the scaled gradient written in place in float32, a per-row
scale for 'none'), elsewhere -- CPU, float64, Triton absent or ``REIMPL_DISABLE_TRITON=1``
-- the same formula in eager torch ops, also in place. This is Liger-Kernel's design: no
N x V buffer, a single chunk-sized one.

``options``: torch >= 2.13's ``LinearCrossEntropyOptions`` (or any object with its fields
``batch_chunk_size`` and ``chunking_method``) sets the rows per chunk. Unlike torch's
chunked op, ours also chunks with label smoothing, so it warns only where it too falls back
to the composite form. Bad input raises what torch's reference path (``options=None``)
raises, with or without ``options`` (torch's chunked op raises other types for some).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any

import torch
from torch import Tensor

from reimpl.nn.functional import _autocast, _reduction
from reimpl.nn.functional._classification import (
    _check_target_range,
    _class_index_target,
    _class_weight,
    cross_entropy,
)
from reimpl.nn.functional._common import LOW_PRECISION, aliases, to_dtype
from reimpl.nn.functional._common import check_not_differentiable as _check_not_differentiable
from reimpl.nn.functional._common import compiling as _compiling
from reimpl.nn.functional._common import transformed as _transformed
from reimpl.nn.functional._cross_entropy_lean import _rows_eager, rows_impl

#: a chunk holds at least this many logits (64 MiB in float32) when there are that many:
#: each chunk re-reads W three times for 6*rows*V*D flops, so few rows starve the matrix
#: products (CPU, N=1024, D=256, V=8192: 64-row chunks 4x slower than 1024-row ones)
MIN_CHUNK_LOGITS = 1 << 24


# --------------------------------------------------------------------------- linear


def linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """x W^T + b as torch's linear computes it: one fused addmm for a 2-D input with a bias
    (the bias added before the product is rounded), else a matmul then the bias."""
    if b is not None and x.dim() == 2:
        return torch.addmm(b, x, w.t())
    out = torch.matmul(x, w.t())
    return out if b is None else out + b


# --------------------------------------------------------------------------- chunk size


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _aspect_rows(n: int, d: int, v: int, divisor: int) -> int:
    """Rows whose logits (rows x v) take about as much memory as the input (n x d), a power
    of two, divided by ``divisor`` (``chunking_method="aspect_ratio[:divisor]"``)."""
    per_row = -(-v // max(d, 1))
    return max(1, min(_next_pow2(-(-n // per_row)) // divisor, n))


def rows_per_chunk(n: int, d: int, v: int, options: Any = None) -> int:
    """Rows per chunk for an (n, d) input and v classes.

    Default (no options, or ``chunking_method="auto"`` without a size): logits about the
    input's size (Liger-Kernel's rule), but at least :data:`MIN_CHUNK_LOGITS` of them.
    ``options`` is read by the fields of torch's ``LinearCrossEntropyOptions``:
    ``batch_chunk_size`` (rows; None and no method: one chunk) and ``chunking_method``
    (``"aspect_ratio"`` or ``"aspect_ratio:k"``, k times fewer rows); both given must agree.
    """
    size: int | None = getattr(options, "batch_chunk_size", None)
    method = getattr(options, "chunking_method", None) if options is not None else "auto"
    if method == "auto" and size is None:
        floor = -(-MIN_CHUNK_LOGITS // max(v, 1))
        return max(1, min(n, max(_aspect_rows(n, d, v, 1), floor)))
    if method is None or method == "auto":
        return max(1, n if size is None else min(int(size), n))
    name, _, factor = str(method).partition(":")
    factor = factor or "1"
    if name != "aspect_ratio" or not factor.isdigit() or int(factor) < 1:
        raise ValueError(f"chunking_method {method!r} is not one of 'auto', 'aspect_ratio[:k]'")
    rows = _aspect_rows(n, d, v, int(factor))
    if size is not None and int(size) != rows:
        raise ValueError(
            f"options give two chunk sizes: batch_chunk_size={size} and chunking_method="
            f"{method!r}, which gives {rows} rows here; set only one of them"
        )
    return rows


# --------------------------------------------------------------------------- chunked Function


def _chunks(
    x: Tensor,
    w: Tensor,
    b: Tensor | None,
    t: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    smoothing: float,
    rows: int,
    scale: Tensor | None,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Per-row losses and, when ``scale`` is given, the three gradients (each only if its
    ``needs`` entry is set) with d(loss)/d(logits) multiplied by ``scale`` -- one number,
    or one per row (n, 1).

    ``x`` (n, d) and ``w`` (v, d) are in the compute dtype; the cross-entropy runs in the
    accumulation dtype (float32 for 16-bit inputs), in which ``weight`` comes.
    """
    n, v = x.shape[0], w.shape[0]
    acc = torch.float32 if x.dtype in LOW_PRECISION else x.dtype
    loss = torch.empty(n, dtype=acc, device=x.device)
    want = scale is not None
    gx = torch.empty_like(x, memory_format=torch.contiguous_format) if want and needs[0] else None
    gw = torch.zeros(w.shape, dtype=acc, device=w.device) if want and needs[1] else None
    gb = torch.zeros(v, dtype=acc, device=w.device) if want and needs[2] else None
    wt = w.t()
    for s in range(0, n, rows):
        e = min(s + rows, n)
        xc = x[s:e]
        z = torch.addmm(b, xc, wt) if b is not None else xc @ wt
        row_scale = None if scale is None else (scale[s:e] if scale.dim() == 2 else scale)
        z = z.to(acc)  # 16-bit logits: the float32 copy replaces them
        rows_fn = rows_impl(z) or _rows_eager
        # the chunk's logits are dead once read: the row step writes dz over them
        lc, dz = rows_fn(z, t[s:e], weight, ignore_index, smoothing, row_scale, want, in_place=True)
        del z
        loss[s:e] = lc
        if dz is None:
            continue
        if gx is not None:
            # torch's linear backward takes the logits' gradient in the input's dtype
            torch.mm(dz.to(x.dtype), w, out=gx[s:e])
        if gw is not None:
            gw.addmm_(dz.t(), xc.to(acc))
        if gb is not None:
            gb.add_(dz.sum(0))
    return (
        loss,
        gx,
        None if gw is None else gw.to(w.dtype),
        None if gb is None or b is None else gb.to(b.dtype),
    )


def _needs(ctx: Any) -> tuple[bool, bool, bool]:
    """Which of x, W, b want a gradient."""
    x, w, b = ctx.needs_input_grad[:3]
    return bool(x), bool(w), bool(b)


class LinearCrossEntropy(torch.autograd.Function):
    """loss(x W^T + b, t) over row chunks; see the module docstring for the two backward
    strategies. Inputs: 2-D ``x``, int64 ``t`` of x's rows, ``weight`` in the accumulation
    dtype. ``out_dtype``: the result's dtype (the input's, float32 under CPU autocast)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        w: Tensor,
        b: Tensor | None,
        t: Tensor,
        weight: Tensor | None,
        ignore_index: int,
        smoothing: float,
        reduction: str,
        rows: int,
        out_dtype: torch.dtype,
    ) -> Tensor:
        acc = torch.float32 if x.dtype in LOW_PRECISION else x.dtype
        keep = t != ignore_index
        denom = inv = torch.ones((), dtype=acc, device=x.device)
        if reduction == "mean":
            w_t = weight[torch.where(keep, t, 0)] if weight is not None else keep.to(acc)
            denom = torch.where(keep, w_t, 0).sum()
            # every row ignored: the mean is nan but (as in torch) the gradient is 0
            inv = 1 / torch.where(denom == 0, 1, denom)
        needs = _needs(ctx)
        precompute = reduction != "none" and any(needs)
        scale = inv.reshape(1) if precompute else None
        loss, gx, gw, gb = _chunks(x, w, b, t, weight, ignore_index, smoothing, rows, scale, needs)
        ctx.save_for_backward(x, w, b, t, weight)
        ctx.args = (ignore_index, smoothing, reduction, rows, out_dtype)
        ctx.inv = inv
        ctx.grads = (gx, gw, gb) if precompute else None
        if reduction == "none":
            return to_dtype(loss, out_dtype)
        # torch's CPU nll_loss sums float32 terms in float64
        wide = torch.float64 if acc == torch.float32 and x.device.type == "cpu" else acc
        total = loss.sum(dtype=wide)
        return to_dtype(total / denom if reduction == "mean" else total, out_dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, w, b, t, weight = ctx.saved_tensors
        ignore_index, smoothing, reduction, rows, out_dtype = ctx.args
        needs = _needs(ctx)
        rest = (None,) * 7
        if torch.is_grad_enabled():  # create_graph=True: differentiate the composite form
            with torch.enable_grad():
                x, w, b = aliases(x, w, b)
                wanted = [a for a, need in zip((x, w, b), needs, strict=True) if need]
                logits = linear(x, w, b).to(out_dtype)
                loss = cross_entropy(
                    logits,
                    t,
                    None if weight is None else weight.to(logits.dtype),
                    ignore_index=ignore_index,
                    reduction=reduction,
                    label_smoothing=smoothing,
                )
                found = iter(torch.autograd.grad(loss, wanted, g, create_graph=True))
            return (*(next(found) if need else None for need in needs), *rest)
        if ctx.grads is not None:
            # the first backward takes the buffers (autograd may keep them as .grad without
            # a copy); a later one through a retained graph recomputes below
            grads, ctx.grads = ctx.grads, None
            return (*(None if a is None else a.mul_(g) for a in grads), *rest)
        acc = ctx.inv.dtype
        scale = (
            g.to(acc).reshape(-1, 1) if reduction == "none" else (g.to(acc) * ctx.inv).reshape(1)
        )
        _, gx, gw, gb = _chunks(x, w, b, t, weight, ignore_index, smoothing, rows, scale, needs)
        return (gx, gw, gb, *rest)


# --------------------------------------------------------------------------- functional


def _check_shapes(x: Tensor, w: Tensor, b: Tensor | None) -> tuple[int, tuple[int, ...]]:
    """torch's checks of input, linear_weight and linear_bias (in its order):
    (n_classes, out_features)."""
    if not 1 <= x.dim() <= 2:
        raise RuntimeError(
            f"linear_cross_entropy takes a 1-D (in_features) or 2-D (N, in_features) input, "
            f"got a {x.dim()}-D input"
        )
    if w.dim() < 2:
        raise RuntimeError(
            "linear_weight must have at least 2 dimensions (num_classes, ..., in_features), "
            f"got a {w.dim()}-D tensor"
        )
    if x.shape[-1] != w.shape[-1]:
        raise RuntimeError(
            f"in_features differ: the input's last dimension is {x.shape[-1]}, "
            f"linear_weight's is {w.shape[-1]}"
        )
    n_classes, out_features = w.shape[0], tuple(w.shape[1:-1])
    if b is not None and tuple(b.shape) != (n_classes, *out_features):
        raise RuntimeError(
            f"linear_bias must have shape {(n_classes, *out_features)} (num_classes, "
            f"*out_features), got {tuple(b.shape)}"
        )
    if out_features and x.dim() == 1:
        raise RuntimeError(
            f"a K-dimensional loss (linear_weight of shape {tuple(w.shape)}) needs a batched "
            f"(N, {x.shape[-1]}) input, got an unbatched input of shape {tuple(x.shape)}"
        )
    return n_classes, out_features


def linear_cross_entropy(
    input: Tensor, linear_weight: Tensor, target: Tensor, *, linear_bias: Tensor | None = None,
    weight: Tensor | None = None, reduction: str = "mean", ignore_index: int | None = None,
    label_smoothing: float = 0.0, options: Any = None,
) -> Tensor:  # fmt: skip
    """``cross_entropy(linear(input, linear_weight, linear_bias), target, ...)`` without
    ever holding the whole logits tensor (for class-index targets).

    ``linear_weight`` is (C, in_features) or (C, d_1, ..., d_K, in_features) for a
    K-dimensional loss; ``ignore_index=None`` means -100 for class indices and is the only
    value allowed with class-probability targets (same shape as the logits).
    """
    n_classes, out_features = _check_shapes(input, linear_weight, linear_bias)
    logits_shape = (*input.shape[:-1], n_classes, *out_features)
    probabilities = tuple(target.shape) == logits_shape
    if probabilities and ignore_index is not None:
        raise RuntimeError(
            f"ignore_index={ignore_index} has no meaning for class-probability targets; "
            "leave it as None"
        )
    ignore = -100 if ignore_index is None else ignore_index
    ac = _autocast.active(input)
    if ac is None:  # under autocast the linear casts them to one dtype
        for name, t in (("linear_weight", linear_weight), ("linear_bias", linear_bias)):
            if t is not None and t.dtype != input.dtype:
                raise RuntimeError(
                    f"{name} has dtype {t.dtype}, the input {input.dtype}: they must match"
                )
    tracing = torch.jit.is_tracing()
    chunkable = not (out_features or probabilities or target.dtype != torch.int64 or tracing)
    if options is not None and not chunkable:
        warnings.warn(
            "linear_cross_entropy: options has no effect here; the chunked path takes "
            "class-index (int64) targets, out_features == () and no jit tracing, got "
            f"target dtype {target.dtype}, out_features={out_features}, tracing={tracing}",
            UserWarning,
            stacklevel=2,
        )
    x, w, b, cw, out_dtype = input, linear_weight, linear_bias, weight, input.dtype
    if ac == "cpu" and chunkable:  # autocast's linear in its dtype, cross-entropy in float32
        with _autocast.off(ac):
            x, w = _autocast.lower(ac, x), _autocast.lower(ac, w)
            b = None if b is None else _autocast.lower(ac, b)
        cw, out_dtype = _autocast.fp32_opt(ac, weight), torch.float32
    lean = (
        chunkable
        and ac != "cuda"  # CUDA autocast: the composite (its cross-entropy policy differs)
        and x.numel() > 0
        and n_classes > 0
        and x.is_floating_point()
        and w.dtype == x.dtype
        and (b is None or b.dtype == x.dtype)
        and not _compiling()
        and not _transformed()
    )
    if not lean:
        return _composite(
            input, linear_weight, linear_bias, target, weight, reduction, ignore,
            label_smoothing, logits_shape, ac,
        )  # fmt: skip
    reduction = _reduction.resolve(reduction)
    logits_like = x.new_empty((), dtype=out_dtype).expand(logits_shape)  # shapes only
    _class_index_target(logits_like, target)
    if label_smoothing > 1.0:
        raise RuntimeError(f"label_smoothing must be in [0.0, 1.0], got {label_smoothing}")
    _class_weight(cw, logits_like, n_classes)
    _check_not_differentiable("cross_entropy", weight=cw)
    _check_target_range(target, n_classes, ignore)
    x2 = x if x.dim() == 2 else x.unsqueeze(0)
    acc = torch.float32 if x.dtype in LOW_PRECISION else x.dtype
    with _autocast.off(ac) if ac is not None else contextlib.nullcontext():
        out: Tensor = LinearCrossEntropy.apply(
            x2, w, b, target.reshape(x2.shape[:1]), None if cw is None else cw.to(acc),
            ignore, max(label_smoothing, 0.0), reduction,
            rows_per_chunk(x2.shape[0], x2.shape[1], n_classes, options), out_dtype,
        )  # fmt: skip
    return out.reshape(()) if x.dim() == 1 and reduction == "none" else out


def _composite(
    x: Tensor, w: Tensor, b: Tensor | None, target: Tensor, weight: Tensor | None,
    reduction: str, ignore_index: int, smoothing: float, logits_shape: tuple[int, ...],
    ac: str | None,
) -> Tensor:  # fmt: skip
    """The reference definition: our linear, then our cross_entropy (each with its autocast
    policy: the linear in autocast's dtype, the cross-entropy as :func:`cross_entropy`)."""
    if w.dim() > 2:  # K-dimensional: one linear to C * d_1 * ... * d_K outputs
        w = w.reshape(math.prod(w.shape[:-1]), w.shape[-1])
        b = None if b is None else b.reshape(-1)
    if ac is None:
        logits = linear(x, w, b)
    else:
        with _autocast.off(ac):
            logits = linear(
                _autocast.lower(ac, x),
                _autocast.lower(ac, w),
                None if b is None else _autocast.lower(ac, b),
            )
    return cross_entropy(
        logits.reshape(logits_shape),
        target,
        weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=smoothing,
    )
