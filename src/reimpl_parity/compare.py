"""Comparing reimpl's results with torch's: tolerances per dtype and readable failures."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

#: ``torch.testing.assert_close`` defaults. Loosen only per case, with a reason.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1.3e-6, 1e-5),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.complex128: (1e-7, 1e-7),
    torch.complex64: (1.3e-6, 1e-5),
}
EXACT = (0.0, 0.0)


def tolerance(
    dtype: torch.dtype, overrides: Mapping[torch.dtype, tuple[float, float]] | None = None
) -> tuple[float, float]:
    if overrides and dtype in overrides:
        return overrides[dtype]
    return TOLERANCES.get(dtype, EXACT)


class ParityError(AssertionError):
    """reimpl and torch disagree; the message names the call and where."""


@dataclass
class Diff:
    """Largest differences seen (over finite positions where both agree on non-finites)."""

    max_abs: float = 0.0
    max_rel: float = 0.0

    def update(self, other: Diff) -> None:
        self.max_abs = max(self.max_abs, other.max_abs)
        self.max_rel = max(self.max_rel, other.max_rel)


def _fmt_index(t: Tensor, flat: int) -> str:
    if t.dim() == 0:
        return ""
    idx = []
    for size in reversed(t.shape):
        idx.append(flat % size)
        flat //= size
    return "[" + ",".join(str(i) for i in reversed(idx)) + "]"


def compare_tensors(
    ours: Tensor, theirs: Tensor, *, rtol: float, atol: float, what: str, check_dtype: bool = True
) -> Diff:
    """``assert_close(equal_nan=True)`` that returns the error and names ``what`` on failure."""
    if ours.shape != theirs.shape:
        raise ParityError(f"{what}: shape {tuple(ours.shape)}, torch {tuple(theirs.shape)}")
    if check_dtype and ours.dtype != theirs.dtype:
        raise ParityError(f"{what}: dtype {ours.dtype}, torch {theirs.dtype}")
    if ours.device != theirs.device:
        raise ParityError(f"{what}: device {ours.device}, torch {theirs.device}")
    if ours.numel() == 0:
        return Diff()
    if not ours.is_sparse and torch.equal(ours, theirs):  # bitwise equal: nothing to measure
        return Diff()
    if ours.is_sparse:
        ours, theirs = ours.to_dense(), theirs.to_dense()
    if not (ours.is_floating_point() or ours.is_complex()):
        mismatch = ours != theirs
        if bool(mismatch.any()):
            i = int(mismatch.flatten().nonzero()[0])
            raise ParityError(
                f"{what}{_fmt_index(ours, i)}: {ours.flatten()[i].item()}, "
                f"torch {theirs.flatten()[i].item()}"
            )
        return Diff()
    wide = torch.complex128 if ours.is_complex() else torch.float64
    a = ours.detach().to(wide).cpu().flatten()
    b = theirs.detach().to(wide).cpu().flatten()
    both_nan = torch.isnan(a) & torch.isnan(b)
    same_inf = torch.isinf(a) & torch.isinf(b) & (a == b)
    special = both_nan | same_inf
    err = torch.where(special, 0, (a - b).abs())
    err = torch.where(torch.isnan(err), torch.inf, err)  # nan on one side only
    bound = atol + rtol * b.abs()
    bad = err > torch.where(torch.isnan(bound), 0, bound)
    rel = torch.where(special, 0, err / b.abs().clamp_min(torch.finfo(torch.float64).tiny))
    diff = Diff(float(err.max()), float(rel.max()))
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ParityError(
            f"{what}{_fmt_index(ours, i)}: {a[i].item()!r}, torch {b[i].item()!r} "
            f"(|diff| {err[i].item():.3g} > atol {atol:g} + rtol {rtol:g}·|torch|; "
            f"{int(bad.sum())} of {a.numel()} elements off; dtype {ours.dtype})"
        )
    return diff


def compare(
    ours: Any, theirs: Any, *, rtol: float, atol: float, what: str, check_dtype: bool = True
) -> Diff:
    """Tensors, numbers, None and (nested) sequences/dicts of them."""
    if isinstance(theirs, Tensor) or isinstance(ours, Tensor):
        if not (isinstance(ours, Tensor) and isinstance(theirs, Tensor)):
            raise ParityError(f"{what}: {type(ours).__name__}, torch {type(theirs).__name__}")
        return compare_tensors(
            ours, theirs, rtol=rtol, atol=atol, what=what, check_dtype=check_dtype
        )
    if isinstance(theirs, Mapping):
        if not isinstance(ours, Mapping) or set(ours) != set(theirs):
            keys = sorted(map(str, ours)) if isinstance(ours, Mapping) else type(ours).__name__
            raise ParityError(f"{what}: keys {keys}, torch {sorted(map(str, theirs))}")
        total = Diff()
        for k in theirs:
            total.update(
                compare(
                    ours[k],
                    theirs[k],
                    rtol=rtol,
                    atol=atol,
                    what=f"{what}[{k!r}]",
                    check_dtype=check_dtype,
                )
            )
        return total
    if isinstance(theirs, (list, tuple)):
        if not isinstance(ours, (list, tuple)) or len(ours) != len(theirs):
            raise ParityError(f"{what}: {ours!r}, torch {theirs!r}")
        total = Diff()
        for i, (o, t) in enumerate(zip(ours, theirs, strict=True)):
            total.update(
                compare(o, t, rtol=rtol, atol=atol, what=f"{what}[{i}]", check_dtype=check_dtype)
            )
        return total
    if isinstance(theirs, float) and isinstance(ours, (int, float)):
        a, b = float(ours), theirs
        if a != b and not (a != a and b != b) and abs(a - b) > atol + rtol * abs(b):
            raise ParityError(f"{what}: {a!r}, torch {b!r}")
        return Diff(abs(a - b) if a == a and b == b else 0.0)
    if ours != theirs:
        raise ParityError(f"{what}: {ours!r}, torch {theirs!r}")
    return Diff()
