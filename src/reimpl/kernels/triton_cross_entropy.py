"""Triton kernel: cross-entropy loss and its logits gradient, one program per row.

Two sweeps over a row of C logits in blocks: the first keeps a running max m and the
rescaled sum s of exp(x - m) (online softmax) and, with label smoothing, sum_c w_c x_c; the
second writes the gradient (see ``reimpl.nn.functional._cross_entropy_lean`` for the
formula) in the logits' dtype, already scaled for the reduction -- by one number, or by one
per row (reduction='none' backward). Arithmetic is float32.

The gradient can go into the logits buffer itself (``in_place``): each block of the second
sweep is read before it is overwritten and rows are independent, so a caller that no longer
needs the logits (linear_cross_entropy's chunks) holds one logits-sized buffer, not two.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _ce_row_kernel(
    x_ptr,
    x_stride,
    t_ptr,
    w_ptr,
    loss_ptr,
    g_ptr,
    g_stride,
    scale_ptr,
    scale_stride,
    n_cols,
    ignore_index,
    smoothing,
    w_sum_ptr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    w_sum = tl.load(w_sum_ptr).to(tl.float32)
    x_row = x_ptr + row * x_stride
    t = tl.load(t_ptr + row)
    keep = t != ignore_index
    t_safe = tl.where(keep, t, 0)
    cols = tl.arange(0, BLOCK)

    m = -float("inf")
    s = 0.0
    wx = 0.0
    for start in range(0, n_cols, BLOCK):
        c = start + cols
        inb = c < n_cols
        x = tl.load(x_row + c, mask=inb, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 0))
        # rescale the old sum; exp(-inf - -inf) would be nan, so guard an all -inf prefix
        alpha = tl.where(m_new == -float("inf"), 0.0, tl.exp(m - m_new))
        s = s * alpha + tl.sum(tl.where(inb, tl.exp(x - m_new), 0.0), 0)
        m = m_new
        if SMOOTH:
            if HAS_WEIGHT:
                w = tl.load(w_ptr + c, mask=inb, other=0.0).to(tl.float32)
                wx += tl.sum(w * tl.where(inb, x, 0.0), 0)
            else:
                wx += tl.sum(tl.where(inb, x, 0.0), 0)
    lse = m + tl.log(s)

    x_t = tl.load(x_row + t_safe).to(tl.float32)
    if HAS_WEIGHT:
        w_t = tl.load(w_ptr + t_safe).to(tl.float32)
    else:
        w_t = 1.0
    w_t = tl.where(keep, w_t, 0.0)
    loss = (1.0 - smoothing) * w_t * (lse - x_t)
    if SMOOTH:
        loss += smoothing / n_cols * (lse * w_sum - wx)
    tl.store(loss_ptr + row, tl.where(keep, loss, 0.0))

    if NEED_GRAD:
        # scale_stride 0: one factor for every row; 1: a factor per row
        scale = tl.load(scale_ptr + row * scale_stride).to(tl.float32)
        k = tl.where(keep, 1.0, 0.0)
        coeff = ((1.0 - smoothing) * w_t + smoothing / n_cols * w_sum * k) * scale
        g_row = g_ptr + row * g_stride
        for start in range(0, n_cols, BLOCK):
            c = start + cols
            inb = c < n_cols
            x = tl.load(x_row + c, mask=inb, other=0.0).to(tl.float32)
            g = tl.exp(x - lse) * coeff
            g = tl.where(c == t_safe, g - (1.0 - smoothing) * w_t * scale, g)
            if SMOOTH:
                if HAS_WEIGHT:
                    w = tl.load(w_ptr + c, mask=inb, other=0.0).to(tl.float32)
                else:
                    w = 1.0
                g = g - smoothing / n_cols * w * k * scale
            tl.store(g_row + c, g.to(g_ptr.dtype.element_ty), mask=inb)


def cross_entropy_rows(
    x: Tensor,
    t: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    smoothing: float,
    scale: Tensor | None,
    need_grad: bool,
    block: int | None = None,
    *,
    in_place: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Per-row losses (float32) and, if asked, the logits gradient times ``scale``: shape
    (1,) for one factor, (n, 1) for one per row; None only without a gradient. With
    ``in_place`` the gradient overwrites ``x`` (a copy when ``x`` is not row-contiguous)."""
    n, c = x.shape
    if need_grad and scale is None:
        raise ValueError("cross_entropy_rows: a gradient needs a scale (shape (1,) or (n, 1))")
    if x.stride(1) != 1:
        x = x.contiguous()
    t = t.contiguous()
    weight = weight.contiguous() if weight is not None else None
    loss = torch.empty(n, dtype=torch.float32, device=x.device)
    fresh = need_grad and not in_place
    grad = torch.empty_like(x, memory_format=torch.contiguous_format) if fresh else x
    w = weight if weight is not None else x  # unused pointer when HAS_WEIGHT is False
    per_row = scale is not None and scale.dim() == 2
    s = loss if scale is None else scale.reshape(-1)  # unused pointer without a gradient
    if per_row and s.numel() != n:
        raise ValueError(f"cross_entropy_rows: a per-row scale needs {n} rows, got {s.numel()}")
    # a device scalar, so no host sync
    w_sum = (
        weight.float().sum() if weight is not None else torch.tensor(float(c), device=x.device)
    ).reshape(1)
    block = block or min(triton.next_power_of_2(max(c, 1)), 4096 if x.is_cuda else 1024)
    if n:
        _ce_row_kernel[(n,)](
            x,
            x.stride(0),
            t,
            w,
            loss,
            grad,
            grad.stride(0),
            s,
            s.stride(0) if per_row else 0,
            c,
            ignore_index,
            float(smoothing),
            w_sum,
            HAS_WEIGHT=weight is not None,
            SMOOTH=smoothing > 0,
            NEED_GRAD=need_grad,
            BLOCK=block,
        )
    return loss, (grad if need_grad else None)
