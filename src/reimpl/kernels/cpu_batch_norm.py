"""Binding for the batch normalization kernels in ``cpu_batch_norm.c`` (built into the
library of :mod:`reimpl.kernels.cpu_fused`, so the same compiler, cache and opt-outs apply).

The kernels see the input as ``(n, c, s)``: NCHW-contiguous ("planes") or, for
channels_last inputs and any input with ``s == 1``, as ``n * s`` rows of ``c`` channels
("rows"). They read and write ``n * c * s`` elements of x, dy, y and dx and ``c`` of every
per-channel operand straight from the tensors' addresses. :func:`_checked` is the one
gate: every operand that comes from the caller must be a plain, dense CPU tensor of the
input's dtype in the layout's memory format, holding exactly that many elements within its
storage (what the kernels write is allocated here, fresh, so it can overlap nothing);
otherwise ``RuntimeError``. :func:`usable` and :func:`layout` say beforehand whether the
kernels take an input at all, and how.
"""

from __future__ import annotations

import ctypes
import math
from functools import cache
from typing import Any, NamedTuple

import torch
from torch import Tensor

from reimpl.kernels import cpu_fused, guard

_DTYPES = {torch.float32: "f32", torch.float64: "f64"}
_P = ctypes.c_void_p
_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}
_DENSE = torch.contiguous_format


class Layout(NamedTuple):
    """x as ``(n, c, s)``; ``rows``: channels innermost (``n * s`` rows of ``c``);
    ``format``: the memory format x, y, dy and dx have in it."""

    n: int
    c: int
    s: int
    rows: bool
    format: torch.memory_format


class BatchNormArgs(ctypes.Structure):
    """``batch_norm_t`` in ``cpu_batch_norm.c``."""

    _fields_ = [
        *((f, _P) for f in ("x", "w", "b", "dy", "running_mean", "running_var")),
        *((f, _P) for f in ("y", "mean", "invstd", "var_sum", "dx", "dw", "db")),
        *((f, ctypes.c_int64) for f in ("n", "c", "s")),
        ("rows", ctypes.c_int32),
        ("train", ctypes.c_int32),
        ("eps", ctypes.c_double),
        ("sums", _P),
        ("total", ctypes.c_int64),
    ]


@cache
def _functions() -> dict[str, Any] | None:
    names = [f"batch_norm_{way}_{d}" for way in ("fwd", "bwd") for d in _DTYPES.values()]
    return cpu_fused.bind(names, BatchNormArgs, ctypes.c_int)


def layout(x: Tensor) -> Layout | None:
    """How the kernels would read ``x`` as it is (None: not as it is; ``x.contiguous()``
    then reads as planes). Channels_last wins where both formats describe the memory (one
    channel, or one position), so the output keeps the format torch gives it."""
    n, c = x.size(0), x.size(1)
    s = math.prod(x.shape[2:])
    fmt = _CHANNELS_LAST.get(x.dim())
    if fmt is not None and x.is_contiguous(memory_format=fmt):
        return Layout(n, c, s, True, fmt)
    if x.is_contiguous():
        return Layout(n, c, s, s == 1, torch.contiguous_format)
    return None


def read_layout(x: Tensor) -> Layout:
    """:func:`layout`, or where the kernels cannot read ``x`` as it is, the layout of the
    contiguous copy they then read (as torch's kernels do)."""
    at = layout(x) or layout(x.contiguous())
    assert at is not None
    return at


def usable(x: Tensor, *others: Tensor | None) -> bool:
    """Can the kernels take ``x`` and the per-channel tensors beside it: plain CPU tensors
    of one float32/float64 dtype (the per-channel ones contiguous), at least two
    dimensions, not empty, outside ``torch.compile``, with the library built. Anything
    else computes with torch ops."""
    if x.dtype not in _DTYPES or x.dim() < 2 or x.numel() == 0:
        return False
    if torch.compiler.is_compiling() or not guard.plain_cpu(x, x.dtype, None):
        return False
    if not all(t is None or guard.plain_cpu(t, x.dtype) for t in others):
        return False
    return _functions() is not None


def _checked(
    where: str,
    dtype: torch.dtype,
    at: Layout,
    read: dict[str, tuple[Tensor | None, int]],
    written: dict[str, tuple[Tensor | None, int]] | None = None,
) -> None:
    """Every operand (name -> (tensor or None, element count the kernel walks)) as the
    kernel needs it, :func:`guard.check_dense`: operands of the input's size dense in
    ``at.format``, per-channel ones contiguous."""
    size = at.n * at.c * at.s

    def operands(named: dict[str, tuple[Tensor | None, int]]) -> list[guard.Operand]:
        return [
            (name, t, n, at.format if n == size and t is not None and t.dim() > 1 else _DENSE)
            for name, (t, n) in named.items()
        ]

    guard.check_dense(where, dtype, operands(read), operands(written or {}))


def forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    at: Layout,
    training: bool,
    eps: float,
    keep_stats: bool = True,
    output: bool = True,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """(y, mean, invstd, var_sum): ``x`` normalized per channel, scaled and shifted, with
    the statistics it used (the batch's in training, where ``var_sum`` is the sum of
    squared deviations; the running ones otherwise, ``var_sum`` None, and mean and invstd
    None too unless ``keep_stats``: only a backward needs them). Without ``output``
    (training only) y is None: the batch's statistics alone."""
    fns = _functions()
    assert fns is not None
    if not (output or training):
        raise ValueError("batch norm kernel: only training computes statistics alone")
    size, c = at.n * at.c * at.s, at.c
    y = torch.empty_like(x) if output else None  # (x is dense in at.format: y its strides)
    keep = training or keep_stats
    mean, invstd = (x.new_empty(c), x.new_empty(c)) if keep else (None, None)
    var_sum = x.new_empty(c) if training else None
    stats = {} if training else {"running_mean": (running_mean, c), "running_var": (running_var, c)}
    if not training and (running_mean is None or running_var is None):
        raise RuntimeError("batch norm kernel: evaluation needs running_mean and running_var")
    # (what is written was allocated just above: the right size and format, its own
    # storage, so only what comes from the caller needs the gate)
    _checked(
        "batch norm kernel",
        x.dtype,
        at,
        {"input": (x, size), "weight": (weight, c), "bias": (bias, c), **stats},
    )
    args = BatchNormArgs(
        x=x.data_ptr(),
        w=_ptr(weight),
        b=_ptr(bias),
        running_mean=None if training else _ptr(running_mean),
        running_var=None if training else _ptr(running_var),
        y=_ptr(y),
        mean=_ptr(mean),
        invstd=_ptr(invstd),
        var_sum=_ptr(var_sum),
        n=at.n,
        c=at.c,
        s=at.s,
        rows=at.rows,
        train=training,
        eps=eps,
    )
    if fns[f"batch_norm_fwd_{_DTYPES[x.dtype]}"](ctypes.byref(args)) != 0:
        raise MemoryError("batch norm kernel: no memory for the per-channel terms")
    return y, mean, invstd, var_sum


def eval_forward(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor | None:
    """:func:`forward` in evaluation with nothing for a backward, or None where the kernels
    do not take these operands as they are (the general path then decides). The one pass
    over the operands asks what :func:`usable` and :func:`layout` ask and checks what the
    gate checks (a storage too small for its elements raises ``RuntimeError``): the
    per-call cost matters here, where the kernel is one memory-bound sweep."""
    suffix = _DTYPES.get(x.dtype)
    if suffix is None or x.dim() < 2 or type(x) not in guard._PLAIN or not x.is_cpu:
        return None
    if x.layout != torch.strided or x.numel() == 0 or torch.compiler.is_compiling():
        return None
    at = layout(x)
    fns = _functions()
    if at is None or fns is None:
        return None
    operands = (running_mean, running_var, weight, bias)
    dtype, c = x.dtype, at.c
    for t in operands:
        if t is not None and not (
            type(t) in guard._PLAIN
            and t.is_cpu
            and t.dtype == dtype
            and t.layout == torch.strided
            and t.is_contiguous()
            and t.numel() == c
        ):
            return None
    for name, t in zip(("input", *_STAT_NAMES), (x, *operands), strict=True):
        if t is not None and not guard.storage_holds(t):
            raise RuntimeError(f"batch norm kernel: {name} has a storage smaller than its elements")
    y = torch.empty_like(x)
    args = BatchNormArgs(
        x.data_ptr(), _ptr(weight), _ptr(bias), None, running_mean.data_ptr(),
        running_var.data_ptr(), y.data_ptr(), None, None, None, None, None, None,
        at.n, c, at.s, at.rows, 0, eps,
    )  # fmt: skip
    if fns["batch_norm_fwd_" + suffix](ctypes.byref(args)) != 0:
        raise MemoryError("batch norm kernel: no memory for the per-channel terms")
    return y


_STAT_NAMES = ("running_mean", "running_var", "weight", "bias")


def backward(
    x: Tensor,
    dy: Tensor,
    weight: Tensor | None,
    mean: Tensor,
    invstd: Tensor,
    at: Layout,
    training: bool,
    need: tuple[bool, bool, bool],
    sums: Tensor | None = None,
    total: int = 0,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(dx, dweight, dbias), each only where ``need`` asks, ``dx`` in ``at.format``;
    ``mean``/``invstd``: the statistics the forward normalized with. ``sums`` (training
    only): Σdy then Σdy·(x − mean) per channel, ``2c`` values summed over ``total``
    elements per channel (SyncBatchNorm's, over every rank), used for dx in place of
    the kernel's own sums over ``x``; dweight and dbias, which would be local sums, are
    not computed then."""
    fns = _functions()
    assert fns is not None
    size, c = at.n * at.c * at.s, at.c
    if sums is not None and (not training or need[1] or need[2] or total < 1):
        raise ValueError(
            "batch norm kernel (backward): given sums are for a training input gradient "
            f"alone, over a count of at least 1 (got total={total})"
        )
    dx = torch.empty_like(x) if need[0] else None
    dw = x.new_empty(c) if need[1] else None
    db = x.new_empty(c) if need[2] else None
    _checked(
        "batch norm kernel (backward)",
        x.dtype,
        at,
        {
            "input": (x, size),
            "output gradient": (dy, size),
            "weight": (weight, c),
            "mean": (mean, c),
            "invstd": (invstd, c),
            "sums": (sums, 2 * c),
        },
    )  # (what is written is allocated just above, as in forward)
    args = BatchNormArgs(
        x=x.data_ptr(),
        w=_ptr(weight),
        dy=dy.data_ptr(),
        mean=mean.data_ptr(),
        invstd=invstd.data_ptr(),
        dx=_ptr(dx),
        dw=_ptr(dw),
        db=_ptr(db),
        n=at.n,
        c=at.c,
        s=at.s,
        rows=at.rows,
        train=training,
        eps=0.0,
        sums=_ptr(sums),
        total=total,
    )
    if fns[f"batch_norm_bwd_{_DTYPES[x.dtype]}"](ctypes.byref(args)) != 0:
        raise MemoryError("batch norm kernel (backward): no memory for the per-thread sums")
    return dx, dw, db


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()
