"""Loader for the fused CPU optimizer kernels in ``cpu_fused.c``.

The C file is compiled on first use with the system C compiler (``cc``/``gcc``, ``-O3
-march=native -fopenmp``) into a per-user cache folder keyed by the source's hash
(``$REIMPL_CACHE_DIR``, default ``~/.cache/reimpl``), so later processes just load it.
No compiler, or a failed build: :func:`library` returns None and the optimizers use their
multi-tensor path instead (``fused=True`` stays correct, only not single-pass).
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
_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_INT = ctypes.c_int

# argument layouts after the pointers and length, per kernel family
_SIGNATURES: dict[str, tuple[int, list[str]]] = {
    # name: (number of tensor pointers, scalar kinds: "T" = float/double, "i" = int)
    "adam": (5, ["T"] * 8 + ["i", "i"]),
    "sgd": (3, ["T"] * 4 + ["i", "i", "i"]),
    "adagrad": (3, ["T"] * 3 + ["i"]),
    "rmsprop": (5, ["T"] * 6 + ["i"]),
}
_DTYPES = {torch.float32: ("f32", ctypes.c_float), torch.float64: ("f64", ctypes.c_double)}


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
    base = [cc, "-O3", "-fno-math-errno", "-shared", "-fPIC", str(_SRC)]
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
    digest = hashlib.sha256(_SRC.read_bytes()).hexdigest()[:16]
    root = Path(os.environ.get("REIMPL_CACHE_DIR", Path.home() / ".cache" / "reimpl"))
    target = root / f"cpu_fused-{digest}.so"
    try:
        if not target.exists() and not _build(target):
            return None
        lib = ctypes.CDLL(str(target))
    except OSError:
        return None
    for family, (n_ptr, scalars) in _SIGNATURES.items():
        for suffix, ctype in _DTYPES.values():
            fn = getattr(lib, f"{family}_{suffix}")
            fn.argtypes = [_P] * n_ptr + [_I64] + [ctype if s == "T" else _INT for s in scalars]
            fn.restype = None
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
    return all(
        type(t) in _PLAIN
        and t.device.type == "cpu"
        and t.dtype == dtype
        and t.layout == torch.strided
        and t.is_contiguous()
        and not t.is_complex()
        for ts in tensor_lists
        for t in ts
        if t is not None
    )


def call(family: str, tensors: list[Tensor | None], *scalars: Any) -> None:
    """Run ``<family>_<dtype>`` on one set of same-shaped tensors (None: a null pointer).
    ``tensors[1]`` is the gradient, which the kernels only read."""
    lib = library()
    assert lib is not None
    first = next(t for t in tensors if t is not None)
    suffix, _ = _DTYPES[first.dtype]
    ptrs = [t.data_ptr() if t is not None else None for t in tensors]
    getattr(lib, f"{family}_{suffix}")(*ptrs, first.numel(), *scalars)
    # the kernel wrote behind autograd's back: bump version counters as an in-place op would
    for i, t in enumerate(tensors):
        if t is not None and i != 1:
            torch.autograd.graph.increment_version(t)
