"""Triton kernels: layer norm and RMS norm over rows, forward and backward, for CUDA.

Why kernels: torch ops spend one pass over memory per elementwise step (center, scale,
shift; in backward g = dy·w, g·x̂, the two row means, dx), each writing a temporary the
size of the input. A row of a transformer's hidden size fits in one program's registers,
so each direction can read its inputs once and write its outputs once, as
Liger-Kernel's RMSNorm/LayerNorm kernels (the anchor) do:

* forward: one program per row; the statistics (mean and rstd, RMS norm: rstd) in
  float32, saved for backward as torch's CUDA kernels save them (float32 for 16-bit
  inputs too); y = x̂·w + b rounded once to the input's dtype.
* backward: each program walks a contiguous block of rows; dx per row from the closed
  form dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) (RMS: no mean(g)), g = dy·w; the parameter
  gradients dw = Σ dy·x̂ and db = Σ dy as the program's partial sums, one float32 row of
  an ``(n_programs, H)`` buffer, summed over programs at the end (no atomics, so the
  result is deterministic).

A row longer than ``BLOCK`` is walked in blocks (statistics first, then the outputs), and
its partial parameter sums go through the program's row of the buffer instead of
registers. The same arithmetic as :mod:`reimpl.nn.functional._normalize`'s torch-op
path, so the parity rows' tolerances hold.

No ``from __future__ import annotations``: Triton reads the annotations (``tl.constexpr``)
as objects.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

# mypy: disable-error-code="name-defined"

#: the longest row one block covers on a GPU (registers); longer rows loop over blocks
_MAX_BLOCK = 16384
#: the interpreter runs on numpy: small blocks keep it quick
_MAX_BLOCK_INTERPRETED = 1024


@triton.jit
def _norm_fwd_kernel(
    X, W, B, Y, MEAN, RSTD, n_cols, eps,
    RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * n_cols
    y_row = Y + row * n_cols
    cols = tl.arange(0, BLOCK)
    # two passes for layer norm (mean, then the centered squares): no cancellation in
    # E[x²] − E[x]², and the second pass reads the row from cache
    if RMS:
        mean = 0.0
    else:
        acc = tl.zeros([BLOCK], tl.float32)
        for start in range(0, n_cols, BLOCK):
            c = start + cols
            acc += tl.load(x_row + c, mask=c < n_cols, other=0.0).to(tl.float32)
        mean = tl.sum(acc, 0) / n_cols
        tl.store(MEAN + row, mean)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        c = start + cols
        inb = c < n_cols
        d = tl.where(inb, tl.load(x_row + c, mask=inb, other=0.0).to(tl.float32) - mean, 0.0)
        acc += d * d
    rstd = 1.0 / tl.sqrt(tl.sum(acc, 0) / n_cols + eps)
    tl.store(RSTD + row, rstd)
    for start in range(0, n_cols, BLOCK):
        c = start + cols
        inb = c < n_cols
        y = (tl.load(x_row + c, mask=inb, other=0.0).to(tl.float32) - mean) * rstd
        if HAS_W:
            y = y * tl.load(W + c, mask=inb, other=0.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(B + c, mask=inb, other=0.0).to(tl.float32)
        tl.store(y_row + c, y.to(Y.dtype.element_ty), mask=inb)


@triton.jit
def _row_terms(X, DY, W, x_row, dy_row, c, inb, mean, rstd, HAS_W: tl.constexpr):
    """One block of a row, in float32: dy, x̂ (0 outside the row) and g = dy·w."""
    dy = tl.load(dy_row + c, mask=inb, other=0.0).to(tl.float32)
    x = tl.load(x_row + c, mask=inb, other=0.0).to(tl.float32)
    x_hat = tl.where(inb, (x - mean) * rstd, 0.0)
    if HAS_W:
        g = dy * tl.load(W + c, mask=inb, other=0.0).to(tl.float32)
    else:
        g = dy
    return dy, x_hat, g


@triton.jit
def _norm_bwd_kernel(
    X, DY, W, MEAN, RSTD, DX, DW, DB, n_rows, n_cols, rows_per_program,
    RMS: tl.constexpr, HAS_W: tl.constexpr, NEED_DX: tl.constexpr, NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr, ONE_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    first = pid * rows_per_program
    last = tl.minimum(first + rows_per_program, n_rows)
    part = pid.to(tl.int64) * n_cols  # this program's row of the partial-sum buffers
    dw_acc = tl.zeros([BLOCK], tl.float32)
    db_acc = tl.zeros([BLOCK], tl.float32)
    for i in range(0, last - first):
        r = first.to(tl.int64) + i
        x_row = X + r * n_cols
        dy_row = DY + r * n_cols
        dx_row = DX + r * n_cols
        if RMS:
            mean = 0.0
        else:
            mean = tl.load(MEAN + r)
        rstd = tl.load(RSTD + r)
        if ONE_BLOCK:  # the whole row in registers, read once
            inb = cols < n_cols
            dy, x_hat, g = _row_terms(X, DY, W, x_row, dy_row, cols, inb, mean, rstd, HAS_W)
            if NEED_DX:
                dx = g - x_hat * (tl.sum(g * x_hat, 0) / n_cols)
                if not RMS:
                    dx = dx - tl.sum(g, 0) / n_cols
                tl.store(dx_row + cols, (dx * rstd).to(DX.dtype.element_ty), mask=inb)
            if NEED_DW:
                dw_acc += dy * x_hat
            if NEED_DB:
                db_acc += dy
        else:  # the row's two sums first, then its outputs block by block
            s_gx = 0.0
            s_g = 0.0
            if NEED_DX:
                for start in range(0, n_cols, BLOCK):
                    c = start + cols
                    inb = c < n_cols
                    _, x_hat, g = _row_terms(X, DY, W, x_row, dy_row, c, inb, mean, rstd, HAS_W)
                    s_gx += tl.sum(g * x_hat, 0)
                    s_g += tl.sum(g, 0)
            for start in range(0, n_cols, BLOCK):
                c = start + cols
                inb = c < n_cols
                dy, x_hat, g = _row_terms(X, DY, W, x_row, dy_row, c, inb, mean, rstd, HAS_W)
                if NEED_DX:
                    dx = g - x_hat * (s_gx / n_cols)
                    if not RMS:
                        dx = dx - s_g / n_cols
                    tl.store(dx_row + c, (dx * rstd).to(DX.dtype.element_ty), mask=inb)
                if NEED_DW:
                    w_part = DW + part + c
                    tl.store(w_part, tl.load(w_part, mask=inb) + dy * x_hat, mask=inb)
                if NEED_DB:
                    b_part = DB + part + c
                    tl.store(b_part, tl.load(b_part, mask=inb) + dy, mask=inb)
    if ONE_BLOCK:
        inb = cols < n_cols
        if NEED_DW:
            tl.store(DW + part + cols, dw_acc, mask=inb)
        if NEED_DB:
            tl.store(DB + part + cols, db_acc, mask=inb)


def _block(n_cols: int, x: Tensor, block: int | None) -> int:
    cap = _MAX_BLOCK if x.is_cuda else _MAX_BLOCK_INTERPRETED
    return block or min(triton.next_power_of_2(max(n_cols, 1)), cap)


def _warps(block: int) -> int:
    """More warps for longer rows, so each thread holds a few dozen values at most."""
    return max(1, min(16, block // 256))


def forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    rows: int,
    n_cols: int,
    eps: float,
    rms: bool,
    block: int | None = None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """(y, mean or None for RMS norm, rstd) for a contiguous ``x`` of ``rows`` rows of
    ``n_cols`` values; y in x's dtype and shape, the statistics float32 ``(rows,)``."""
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
    mean = None if rms else torch.empty(rows, dtype=torch.float32, device=x.device)
    w = weight.contiguous() if weight is not None else None
    b = bias.contiguous() if bias is not None else None
    blk = _block(n_cols, x, block)
    if rows:
        _norm_fwd_kernel[(rows,)](
            x,
            w if w is not None else x,  # (unused pointer when HAS_W is False)
            b if b is not None else x,
            y,
            mean if mean is not None else rstd,
            rstd,
            n_cols,
            float(eps),
            RMS=rms,
            HAS_W=w is not None,
            HAS_B=b is not None,
            BLOCK=blk,
            num_warps=_warps(blk),
        )
    return y, mean, rstd


def _programs(x: Tensor, rows: int) -> int:
    """Backward's program count: one per SM on a GPU (each keeps its partial parameter
    sums in registers), a few under the interpreter."""
    if x.is_cuda:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        return max(1, min(rows, sms))
    return max(1, min(rows, 4))


def backward(
    x: Tensor,
    dy: Tensor,
    weight: Tensor | None,
    mean: Tensor | None,
    rstd: Tensor,
    rows: int,
    n_cols: int,
    need: tuple[bool, bool, bool],
    block: int | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(dx in x's dtype, dweight and dbias as float32 ``(n_cols,)`` sums), each only where
    ``need`` asks; x and dy contiguous, the statistics as :func:`forward` saved them."""
    n_prog = _programs(x, rows)
    per = -(-rows // n_prog)
    n_prog = -(-rows // per)  # (no program without rows)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format) if need[0] else None
    zeros = torch.zeros if n_cols > _block(n_cols, x, block) else torch.empty
    dw = zeros(n_prog, n_cols, dtype=torch.float32, device=x.device) if need[1] else None
    db = zeros(n_prog, n_cols, dtype=torch.float32, device=x.device) if need[2] else None
    w = weight.contiguous() if weight is not None else None
    blk = _block(n_cols, x, block)
    _norm_bwd_kernel[(n_prog,)](
        x,
        dy,
        w if w is not None else x,
        mean if mean is not None else rstd,
        rstd,
        dx if dx is not None else x,  # (unused pointers when not needed)
        dw if dw is not None else rstd,
        db if db is not None else rstd,
        rows,
        n_cols,
        per,
        RMS=mean is None,
        HAS_W=w is not None,
        NEED_DX=need[0],
        NEED_DW=need[1],
        NEED_DB=need[2],
        ONE_BLOCK=n_cols <= blk,
        BLOCK=blk,
        num_warps=_warps(blk),
    )
    return dx, (dw.sum(0) if dw is not None else None), (db.sum(0) if db is not None else None)
