"""Loader for reimpl's CPU kernels, and the binding of the fused optimizer updates in
``cpu_fused.c`` (``fused=True``; Adafactor's, which need reductions, in ``cpu_adafactor.c``).
The layer and loss kernels built into the same library have their own bindings
(``cpu_norm``, ``cpu_batch_norm``, ``cpu_pointwise``, ``cpu_bce``), through :func:`bind`.

The C files are compiled on first use with the system C compiler (``cc``/``gcc``, ``-O3
-march=native -fopenmp``) into a per-user cache folder keyed by the source's hash
(``$REIMPL_CACHE_DIR``, default ``~/.cache/reimpl``), so later processes just load it.
No compiler, or a failed build: :func:`library` returns None and callers use torch ops
instead (the optimizers' multi-tensor path, the losses' composite form): still correct,
only not single-pass. ``REIMPL_DISABLE_CPU_FUSED=1`` forces that.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Collection, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from reimpl.kernels import guard
from reimpl.kernels.guard import Roles

#: the C sources built into one library: optimizer kernels, pointwise losses, normalization
_SOURCES = [
    Path(__file__).with_name(f)
    for f in (
        "cpu_fused.c",
        "cpu_adafactor.c",
        "cpu_pointwise.c",
        "cpu_norm.c",
        "cpu_batch_norm.c",
        "cpu_cross_entropy.c",
    )
]
_D = ctypes.c_double
_I32 = ctypes.c_int32
MAX_ROLES = 6  # as in cpu_fused.c


# ---------------------------------------------------------------- the C structs, mirrored
class Batch(ctypes.Structure):
    """``batch_t``: k tensors by role (pointer tables), their sizes, per-tensor scalars."""

    _fields_ = [
        ("k", ctypes.c_int64),
        ("n", ctypes.POINTER(ctypes.c_int64)),
        ("t", ctypes.POINTER(ctypes.c_void_p) * MAX_ROLES),
        ("per", ctypes.POINTER(ctypes.c_double) * 3),
        ("first", ctypes.POINTER(ctypes.c_int32)),
        ("grad_scale", ctypes.c_double),
    ]


class AdamOpts(ctypes.Structure):
    """``adam_opts``: w1 = 1 - beta1, b2 = beta2, w2 = 1 - beta2, shrink = 1 - lr*wd."""

    _fields_ = [
        *((f, _D) for f in ("w1", "b2", "w2", "eps", "wd", "shrink")),
        *((f, _I32) for f in ("maximize", "decoupled", "amsgrad")),
    ]


class SGDOpts(ctypes.Structure):
    """``sgd_opts``: undamped = 1 - dampening."""

    _fields_ = [
        *((f, _D) for f in ("lr", "wd", "momentum", "undamped")),
        *((f, _I32) for f in ("nesterov", "maximize")),
    ]


class AdagradOpts(ctypes.Structure):
    """``adagrad_opts``."""

    _fields_ = [("wd", _D), ("eps", _D), ("maximize", _I32)]


class RMSpropOpts(ctypes.Structure):
    """``rmsprop_opts``: w = 1 - alpha."""

    _fields_ = [
        *((f, _D) for f in ("lr", "alpha", "w", "eps", "wd", "momentum")),
        ("maximize", _I32),
    ]


class AdamaxOpts(ctypes.Structure):
    """``adamax_opts``: w1 = 1 - beta1."""

    _fields_ = [*((f, _D) for f in ("w1", "b2", "eps", "wd")), ("maximize", _I32)]


class AdadeltaOpts(ctypes.Structure):
    """``adadelta_opts``: w = 1 - rho."""

    _fields_ = [*((f, _D) for f in ("lr", "rho", "w", "eps", "wd")), ("maximize", _I32)]


class AdamFamilyOpts(ctypes.Structure):
    """``adam_family_opts`` (NAdam, RAdam): w1 = 1 - beta1, w2 = 1 - beta2, shrink =
    1 - lr * wd."""

    _fields_ = [
        *((f, _D) for f in ("lr", "w1", "b2", "w2", "eps", "wd", "shrink")),
        *((f, _I32) for f in ("maximize", "decoupled")),
    ]


class RpropOpts(ctypes.Structure):
    """``rprop_opts``: the step-size factors and bounds."""

    _fields_ = [
        *((f, _D) for f in ("etaminus", "etaplus", "step_min", "step_max")),
        ("maximize", _I32),
    ]


class ASGDOpts(ctypes.Structure):
    """``asgd_opts``."""

    _fields_ = [("lambd", _D), ("wd", _D), ("maximize", _I32)]


class AdafactorOpts(ctypes.Structure):
    """``adafactor_opts``: eps1sq = eps1 * eps1, shrink = 1 - lr * weight_decay; ``dims``:
    per tensor its last two dims (rows, cols), (0, 0) for one kept unfactored."""

    _fields_ = [
        *((f, _D) for f in ("eps1", "eps1sq", "eps2", "d", "shrink")),
        ("maximize", _I32),
        ("dims", ctypes.POINTER(ctypes.c_int64)),
    ]


#: kernel family -> its options struct (the C function is ``<family>_<f32|f64>``)
OPTIONS: dict[str, type[ctypes.Structure]] = {
    "adam": AdamOpts,
    "sgd": SGDOpts,
    "adagrad": AdagradOpts,
    "rmsprop": RMSpropOpts,
    "adamax": AdamaxOpts,
    "adadelta": AdadeltaOpts,
    "nadam": AdamFamilyOpts,
    "radam": AdamFamilyOpts,
    "rprop": RpropOpts,
    "asgd": ASGDOpts,
    "adafactor": AdafactorOpts,
}
#: families whose kernel returns nonzero when it could not allocate its scratch memory
_RETURNS_STATUS = frozenset({"adafactor"})
_DTYPES = {torch.float32: "f32", torch.float64: "f64"}
# torch >= 2.6 bumps a whole list of version counters in one call
_VERSION_TAKES_LISTS = "Iterable" in str(
    getattr(torch.autograd.graph.increment_version, "__annotations__", {}).get("tensor", "")
)
#: REIMPL_SANITIZE=1 builds with AddressSanitizer + UBSan (load with libasan preloaded)
_SANITIZE = [
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
    "-g",
]


def sanitizing() -> bool:
    return os.environ.get("REIMPL_SANITIZE") == "1"


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
    base = [cc, "-O3", "-fno-math-errno", "-ffp-contract=off", "-shared", "-fPIC"]
    base += [str(src) for src in _SOURCES]
    if sanitizing():
        base[1:2] = ["-O1", *_SANITIZE]
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
    sources = b"".join(src.read_bytes() for src in _SOURCES)
    digest = hashlib.sha256(sources + Path(__file__).read_bytes()).hexdigest()[:16]
    root = Path(os.environ.get("REIMPL_CACHE_DIR", Path.home() / ".cache" / "reimpl"))
    target = root / f"cpu_fused-{digest}{'-asan' if sanitizing() else ''}.so"
    try:
        if not target.exists() and not _build(target):
            return None
        lib = ctypes.CDLL(str(target))
    except OSError:
        return None
    for family, opts in OPTIONS.items():
        for suffix in _DTYPES.values():
            fn = getattr(lib, f"{family}_{suffix}")
            fn.argtypes = [ctypes.POINTER(Batch), ctypes.POINTER(opts)]
            fn.restype = _I32 if family in _RETURNS_STATUS else None
    return lib


def bind(
    names: Sequence[str], args: type[ctypes.Structure], restype: Any = None
) -> dict[str, Any] | None:
    """The library's functions ``names``, each taking a pointer to one ``args`` struct and
    returning ``restype``; None without the library (the layer and loss bindings)."""
    lib = library()
    if lib is None:
        return None
    fns = {name: getattr(lib, name) for name in names}
    for fn in fns.values():
        fn.argtypes, fn.restype = [ctypes.POINTER(args)], restype
    return fns


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


def _table(ts: Sequence[Tensor | None] | None) -> Any:
    if ts is None:
        return None
    # a None entry (a state that tensor does not keep, see ``optional``) is a null pointer
    return (ctypes.c_void_p * len(ts))(*[None if t is None else t.data_ptr() for t in ts])


class Prepared:
    """A checked batch (see :func:`prepare`), to :meth:`run` once. Entries that were None
    when it was checked (SGD's momentum buffers that start this step) must be filled
    before the run with fresh tensors; those are checked then. In the ``optional`` roles
    a None entry stays: the kernel gets a null pointer there."""

    def __init__(
        self, where: str, roles: Roles, scaled: bool, optional: Collection[str] = ()
    ) -> None:
        self.where, self.roles, self.scaled = where, roles, scaled
        self.missing = [
            (r, i)
            for r, (name, ts) in enumerate(roles)
            if name not in optional
            for i, t in enumerate(ts or ())
            if t is None
        ]

    def run(
        self,
        family: str,
        opts: ctypes.Structure,
        per: Sequence[Sequence[float]] = (),
        first: Sequence[int] | None = None,
        grad_scale: float | None = None,
    ) -> None:
        """``<family>_<dtype>`` over the batch in one call. ``opts``: the family's options
        struct; ``per``: per-tensor scalars; ``first``: SGD's "buffer starts now";
        ``grad_scale``: GradScaler's scale, the grads are divided by it (and stored so) in
        the same pass -- only if the batch was prepared with ``scaled=True``."""
        if grad_scale is not None and not self.scaled:
            raise ValueError(f"{self.where}: grad_scale needs a batch prepared with scaled=True")
        lib, where, roles = library(), self.where, self.roles
        assert lib is not None
        if not isinstance(opts, OPTIONS[family]):
            want, got = OPTIONS[family].__name__, type(opts).__name__
            raise TypeError(f"{family} kernels take {want}, not {got}")
        params = roles[0][1]
        assert params
        k = len(params)
        for values in (*per, *([first] if first is not None else [])):
            if len(values) != k:
                raise ValueError(f"{where}: {len(values)} per-tensor values for {k} tensors")
        if len(per) > 3:
            raise ValueError(f"{where}: at most 3 per-tensor scalar lists")
        for r, i in self.missing:  # made after the check: fresh tensors shaped like params
            name, ts = roles[r]
            t, p = ts[i], params[i]  # type: ignore[index]
            if not (
                isinstance(t, Tensor)
                and type(t) in _PLAIN
                and t.shape == p.shape  # type: ignore[union-attr]
                and t.dtype == p.dtype  # type: ignore[union-attr]
                and t.is_cpu
                and t.is_contiguous()
            ):
                raise ValueError(f"{where}: {guard.describe(name, i)} was not made before the run")
        batch = Batch(k=k, n=(ctypes.c_int64 * k)(*[t.numel() for t in params]))  # type: ignore[union-attr]
        for r, (_, ts) in enumerate(roles):
            batch.t[r] = _table(ts)
        for r, values in enumerate(per):
            batch.per[r] = (ctypes.c_double * k)(*values)
        if first is not None:
            batch.first = (ctypes.c_int32 * k)(*first)
        if grad_scale is not None:
            if not (math.isfinite(grad_scale) and grad_scale != 0):
                raise ValueError(
                    f"{where}: grad_scale must be finite and nonzero, not {grad_scale}"
                )
            batch.grad_scale = grad_scale
        dtype = params[0].dtype  # type: ignore[union-attr]
        fn = getattr(lib, f"{family}_{_DTYPES[dtype]}")
        if fn(ctypes.byref(batch), ctypes.byref(opts)):  # (before it wrote anything)
            raise MemoryError(f"{where}: the {family} kernel could not allocate its scratch")
        # the kernel wrote behind autograd's back: bump version counters as in-place ops
        # would (roles[1] holds the gradients, which are only read)
        written = [
            t for r, (_, ts) in enumerate(roles) if r != 1 for t in ts or () if t is not None
        ]
        if _VERSION_TAKES_LISTS:
            torch.autograd.graph.increment_version(written)
        else:
            for t in written:
                torch.autograd.graph.increment_version(t)


def prepare(
    where: str,
    roles: Roles,
    *,
    strict: bool = False,
    scaled: bool = False,
    shape_of: guard.ShapeOf | None = None,
) -> Prepared | None:
    """Check a batch for the C kernels -- the one place every kernel call goes through.

    ``roles``: (name, tensors) in the C function's order, params then grads then states
    (a None list: a state this configuration does not have). Every tensor is checked
    against its parameter and the kernel's contract (:func:`guard.check_operands`, one
    pass, O(tensors)): a mismatch, a storage too small or an overlap raises RuntimeError
    naming the parameter and state. Valid tensors the kernel cannot take (no compiler,
    tracing, 16-bit, a subclass such as DTensor, a strided view) give None, and the caller
    computes with torch ops; ``strict`` raises for those too. ``scaled``: the run will
    unscale the grads in place, so they count as written (no overlap allowed).
    ``shape_of``: the roles whose tensors are shaped from their param's shape otherwise
    than like it (:data:`guard.ShapeOf`); their None entries are states those tensors do
    not keep (null pointers for the kernel)."""
    params = roles[0][1]
    if len(roles) > MAX_ROLES:
        raise ValueError(f"{where}: at most {MAX_ROLES} roles")
    if not params:
        return None
    runnable = library() is not None and not torch.compiler.is_compiling()
    dtype = params[0].dtype  # type: ignore[union-attr]
    # one kernel per call, for the first param's dtype: a group mixing dtypes takes torch ops
    if dtype not in _DTYPES or not runnable or any(p.dtype != dtype for p in params):  # type: ignore[union-attr]
        if strict:
            raise RuntimeError(f"{where}: the CPU kernels cannot run these tensors")
        return None
    read = () if scaled else (1,)
    ok = guard.check_operands(
        where, roles, device_type="cpu", strict=strict, read=read, shape_of=shape_of
    )
    return Prepared(where, roles, scaled, shape_of or ()) if ok else None


def call(
    family: str,
    where: str,
    roles: Roles,
    opts: ctypes.Structure,
    per: Sequence[Sequence[float]] = (),
    first: Sequence[int] | None = None,
) -> None:
    """:func:`prepare` (strict) and :meth:`Prepared.run` in one."""
    prepared = prepare(where, roles, strict=True)
    assert prepared is not None
    prepared.run(family, opts, per, first)
