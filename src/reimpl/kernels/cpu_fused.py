"""Loader for the one-pass CPU kernels in ``cpu_fused.c``: the fused optimizer updates
(``fused=True``) and the pointwise losses (MSE, SmoothL1, Huber).

The C file is compiled on first use with the system C compiler (``cc``/``gcc``, ``-O3
-march=native -fopenmp``) into a per-user cache folder keyed by the source's hash
(``$REIMPL_CACHE_DIR``, default ``~/.cache/reimpl``), so later processes just load it.
No compiler, or a failed build: :func:`library` returns None and callers use torch ops
instead (the optimizers' multi-tensor path, the losses' composite form): still correct,
only not single-pass. ``REIMPL_DISABLE_CPU_FUSED=1`` forces that.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

_SRC = Path(__file__).with_name("cpu_fused.c")
_PP = ctypes.POINTER(ctypes.c_void_p)  # an array of data pointers, one per tensor
_I64P = ctypes.POINTER(ctypes.c_int64)
_I32P = ctypes.POINTER(ctypes.c_int32)
_DP = ctypes.POINTER(ctypes.c_double)
_D = ctypes.c_double
_P1 = ctypes.c_void_p  # one tensor's data
_I = ctypes.c_int

# argument types after the tensor count, per kernel family (see cpu_fused.c)
_SIGNATURES: dict[str, list[Any]] = {
    "adam": [_PP] * 5 + [_I64P, _DP, _DP] + [_D] * 6 + [_I] * 3,
    "sgd": [_PP] * 3 + [_I64P, _I32P] + [_D] * 4 + [_I] * 2,
    "adagrad": [_PP] * 3 + [_I64P, _DP] + [_D] * 2 + [_I],
    "rmsprop": [_PP] * 5 + [_I64P] + [_D] * 6 + [_I],
}
_DTYPES = {torch.float32: "f32", torch.float64: "f64"}
# torch >= 2.6 bumps a whole list of version counters in one call
_VERSION_TAKES_LISTS = "Iterable" in str(
    getattr(torch.autograd.graph.increment_version, "__annotations__", {}).get("tensor", "")
)


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build(target: Path) -> bool:
    cc = _compiler()
    if cc is None:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    # no FMA contraction: v - a*a must round like the separate multiply and subtract
    base = [cc, "-O3", "-fno-math-errno", "-ffp-contract=off", "-shared", "-fPIC", str(_SRC)]
    # -march=native where the compiler takes it; OpenMP where available
    for flags in (["-march=native", "-fopenmp"], ["-fopenmp"], ["-march=native"], []):
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            res = subprocess.run([*base, *flags, "-o", str(out)], capture_output=True)
            if res.returncode == 0:
                os.replace(out, target)  # atomic: concurrent builders are harmless
                return True
    return False


@cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, building them if needed; None where that is not possible."""
    if os.environ.get("REIMPL_DISABLE_CPU_FUSED") == "1" or sys.platform == "win32":
        return None
    digest = hashlib.sha256(_SRC.read_bytes() + Path(__file__).read_bytes()).hexdigest()[:16]
    root = Path(os.environ.get("REIMPL_CACHE_DIR", Path.home() / ".cache" / "reimpl"))
    target = root / f"cpu_fused-{digest}.so"
    try:
        if not target.exists() and not _build(target):
            return None
        lib = ctypes.CDLL(str(target))
    except OSError:
        return None
    for family, argtypes in _SIGNATURES.items():
        for suffix in _DTYPES.values():
            fn = getattr(lib, f"{family}_{suffix}")
            fn.argtypes = [ctypes.c_int64, *argtypes]
            fn.restype = None
    for suffix in _DTYPES.values():
        fwd, bwd = getattr(lib, f"pointwise_fwd_{suffix}"), getattr(lib, f"pointwise_bwd_{suffix}")
        fwd.argtypes = [_I, _P1, _P1, _P1, ctypes.c_int64, _D]
        fwd.restype = _D
        bwd.argtypes = [_I, _P1, _P1, _P1, _P1, _P1, ctypes.c_int64, _D, _D]
        bwd.restype = None
    return lib


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def usable(*tensor_lists: list[Tensor] | list[Tensor | None]) -> bool:
    """All tensors plain (no subclass), on CPU, dense, contiguous and of one float32/float64
    dtype. Subclasses are refused because a wrapper such as FSDP2's DTensor reports a CPU
    device and contiguity but has no storage of its own (``data_ptr()`` is 0): the kernel
    would write through a null pointer; they take the multi-tensor path instead."""
    first = tensor_lists[0]
    if not first or first[0] is None or torch.compiler.is_compiling() or library() is None:
        return False  # (a traced step keeps to torch ops: the multi-tensor path)
    dtype = first[0].dtype
    if dtype not in _DTYPES:
        return False
    strided = torch.strided
    for ts in tensor_lists:
        for t in ts:
            # (a float32/float64 dtype already rules out complex tensors)
            if t is not None and not (
                type(t) in _PLAIN
                and t.is_cpu
                and t.dtype == dtype
                and t.layout == strided
                and t.is_contiguous()
            ):
                return False
    return True


def _pointers(ts: list[Tensor] | None) -> Any:
    if ts is None:
        return None
    return (ctypes.c_void_p * len(ts))(*[t.data_ptr() for t in ts])


def call(
    family: str,
    tensors: list[list[Tensor] | None],
    arrays: list[list[float]] | None = None,
    *scalars: Any,
    first: list[int] | None = None,
) -> None:
    """Run ``<family>_<dtype>`` over lists of same-shaped tensors in one call. ``tensors``:
    params, grads, then the states (None: a state this configuration does not have);
    ``arrays``: per-tensor float scalars; ``first``: SGD's per-tensor "buffer is new"."""
    lib = library()
    assert lib is not None
    params = tensors[0]
    assert params is not None
    k = len(params)
    fn = getattr(lib, f"{family}_{_DTYPES[params[0].dtype]}")
    args: list[Any] = [k, *(_pointers(ts) for ts in tensors)]
    args.append((ctypes.c_int64 * k)(*[t.numel() for t in params]))
    if first is not None:
        args.append((ctypes.c_int32 * k)(*first))
    elif family == "sgd":
        args.append(None)
    for values in arrays or []:
        args.append((ctypes.c_double * k)(*values))
    fn(*args, *scalars)
    # the kernel wrote behind autograd's back: bump version counters as in-place ops would
    # (tensors[1] holds the gradients, which are only read)
    written = [t for j, ts in enumerate(tensors) if ts is not None and j != 1 for t in ts]
    if _VERSION_TAKES_LISTS:
        torch.autograd.graph.increment_version(written)
    else:
        for t in written:
            torch.autograd.graph.increment_version(t)


POINTWISE_KINDS = {"mse": 0, "smooth_l1": 1, "huber": 2}


def pointwise_usable(x: Tensor, t: Tensor) -> bool:
    """The pointwise-loss kernels take two same-shaped contiguous CPU float32/float64
    tensors of one dtype (anything else, e.g. a broadcast target, takes the torch ops)."""
    return x.numel() > 0 and x.shape == t.shape and usable([x], [t])


def pointwise_forward(kind: str, x: Tensor, t: Tensor, b: float, reduction: str) -> Tensor:
    """Per-element loss (``reduction='none'``) or its sum/mean, in one pass."""
    lib = library()
    assert lib is not None
    suffix = _DTYPES[x.dtype]
    fn = getattr(lib, f"pointwise_fwd_{suffix}")
    if reduction == "none":
        out = torch.empty_like(x)
        fn(POINTWISE_KINDS[kind], x.data_ptr(), t.data_ptr(), out.data_ptr(), x.numel(), b)
        return out
    total = fn(POINTWISE_KINDS[kind], x.data_ptr(), t.data_ptr(), None, x.numel(), b)
    if reduction == "mean":
        total = total / x.numel() if x.numel() else float("nan")
    return torch.tensor(total, dtype=x.dtype)


def pointwise_backward(
    kind: str, x: Tensor, t: Tensor, g: Tensor, b: float, scale: float | None, need_t: bool
) -> tuple[Tensor, Tensor | None]:
    """dl/dx (and dl/dt = -dl/dx) in one pass: the slope times ``scale`` (a reduced loss's
    upstream gradient over its count) or times ``g`` element-wise (``reduction='none'``)."""
    lib = library()
    assert lib is not None
    fn = getattr(lib, f"pointwise_bwd_{_DTYPES[x.dtype]}")
    gx = torch.empty_like(x)
    gt = torch.empty_like(x) if need_t else None
    gp = None
    if scale is None:
        g = g.expand_as(x).to(x.dtype).contiguous()
        gp = g.data_ptr()
    fn(
        POINTWISE_KINDS[kind],
        x.data_ptr(),
        t.data_ptr(),
        gp,
        gx.data_ptr(),
        gt.data_ptr() if gt is not None else None,
        x.numel(),
        b,
        0.0 if scale is None else scale,
    )
    return gx, gt
