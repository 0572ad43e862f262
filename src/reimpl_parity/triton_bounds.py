"""Every memory access of a Triton kernel checked, where the interpreter runs it.

A compiled kernel's loads and stores cannot be watched, but under ``TRITON_INTERPRET=1``
each one passes through Python as an array of addresses. :func:`bounds_checked` checks
them there, before the access: every address a kernel reads or writes (where its mask is
set) must lie inside the elements of a tensor it may touch, namely

* a tensor passed to the kernel (its own tables, block maps, a 1-element scale...), or
* an operand a binding vetted before the launch (``reimpl.kernels.guard.check_operands``
  and the one-element states of ``triton_launch``): the tensors the kernels reach through
  the address tables.

Anything else raises :class:`OutOfBounds` naming the kernel, the access and the address,
instead of touching memory the kernel does not own. Without the check such a read on CPU
tensors lands in foreign heap memory and crashes only when it happens to cross into an
unmapped page: rarely, and far from its cause. A kernel that reaches a tensor no binding
checked fails too, which is the point: every pointer a kernel follows must have been vetted.

``REIMPL_TRITON_BOUNDS=1`` turns the check on for a whole process
(:func:`enable_from_env`; the distributed workers call it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["OutOfBounds", "active", "bounds_checked", "enable_from_env"]


class OutOfBounds(AssertionError):
    """A kernel reached for memory outside every tensor it may touch."""


class _Extents:
    """Byte ranges ``[start, end)`` a kernel may touch, merged and sorted on demand."""

    def __init__(self) -> None:
        self.spans: list[tuple[int, int]] = []
        self._merged: tuple[np.ndarray, np.ndarray] | None = None

    def add(self, t: Any) -> None:
        if not isinstance(t, torch.Tensor) or t.numel() == 0 or t.device.type != "cpu":
            return
        if t.layout != torch.strided:
            return  # (sparse: the binding's check refuses it; no kernel reaches it)
        try:
            start = t.data_ptr()
        except RuntimeError:  # a wrapper subclass (DTensor): no storage a kernel could reach
            return
        last = sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride(), strict=True))
        self.spans.append((start, start + (last + 1) * t.element_size()))
        self._merged = None

    def merged(self) -> tuple[np.ndarray, np.ndarray]:
        if self._merged is None:
            starts: list[int] = []
            ends: list[int] = []
            for s, e in sorted(self.spans):
                if starts and s <= ends[-1]:
                    ends[-1] = max(ends[-1], e)
                else:
                    starts.append(s)
                    ends.append(e)
            self._merged = (np.array(starts, np.uint64), np.array(ends, np.uint64))
        return self._merged

    def check(self, kernel: str, what: str, ptrs: Any, mask: Any, itemsize: int) -> None:
        addrs = np.asarray(ptrs, dtype=np.uint64)
        on = np.broadcast_to(np.asarray(mask, dtype=bool), addrs.shape)
        addrs = addrs[on]
        if addrs.size == 0:
            return
        starts, ends = self.merged()
        i = np.searchsorted(starts, addrs, side="right").astype(np.int64) - 1
        ok = i >= 0
        ok[ok] &= addrs[ok] + np.uint64(itemsize) <= ends[i[ok]]
        if not ok.all():
            bad = int(addrs[~ok][0])
            raise OutOfBounds(
                f"{kernel}: {what} of {itemsize} bytes at {bad:#x} lies outside every tensor "
                f"the kernel was given or a binding checked ({int((~ok).sum())} of "
                f"{addrs.size} addresses; nearest spans: {_near(starts, ends, bad)})"
            )


def _near(starts: np.ndarray, ends: np.ndarray, addr: int) -> str:
    if starts.size == 0:
        return "none"
    j = int(np.clip(np.searchsorted(starts, np.uint64(addr), side="right") - 1, 0, None))
    picks = range(max(j - 1, 0), min(j + 2, starts.size))
    return ", ".join(f"[{int(starts[k]):#x}, {int(ends[k]):#x})" for k in picks)


_active: list[_Extents] = []
_for_process: list[Any] = []


def _patch(obj: Any, name: str, wrap: Callable[[Any], Any], undo: list[Callable[[], None]]):
    old = getattr(obj, name)
    setattr(obj, name, wrap(old))
    undo.append(lambda: setattr(obj, name, old))


@contextlib.contextmanager
def bounds_checked() -> Iterator[None]:
    """Check every interpreted load and store while open (a no-op nesting inside another)."""
    if _active:
        yield
        return
    from triton.runtime import interpreter

    from reimpl.kernels import guard, triton_launch

    ext = _Extents()
    kernel = ["?"]
    undo: list[Callable[[], None]] = []

    def on_operands(f: Any) -> Any:
        def wrapped(where: str, roles: Any, *a: Any, **kw: Any) -> Any:
            ready = f(where, roles, *a, **kw)  # (first: its errors stay its own)
            for _, ts in roles:
                for t in ts or ():
                    ext.add(t)
            return ready

        return wrapped

    def on_one_element(f: Any) -> Any:
        def wrapped(where: str, name: str, ts: Any, params: Any) -> Any:
            f(where, name, ts, params)
            for t in ts:
                ext.add(t)

        return wrapped

    def on_arg(f: Any) -> Any:
        def wrapped(arg: Any) -> Any:
            ext.add(arg)
            return f(arg)

        return wrapped

    def on_call(f: Any) -> Any:
        def wrapped(self: Any, *a: Any, **kw: Any) -> Any:
            kernel[0] = getattr(self.fn, "__name__", "?")
            return f(self, *a, **kw)

        return wrapped

    def on_load(f: Any) -> Any:
        def wrapped(self: Any, ptrs: Any, mask: Any, other: Any, *a: Any) -> Any:
            elt = interpreter._get_np_dtype(ptrs.get_element_ty())
            ext.check(kernel[0], "load", ptrs.data, mask.data, np.dtype(elt).itemsize)
            return f(self, ptrs, mask, other, *a)

        return wrapped

    def on_store(f: Any) -> Any:
        def wrapped(self: Any, ptrs: Any, value: Any, mask: Any, *a: Any) -> Any:
            ext.check(kernel[0], "store", ptrs.data, mask.data, value.data.itemsize)
            return f(self, ptrs, value, mask, *a)

        return wrapped

    builder = interpreter.InterpreterBuilder
    try:
        _patch(guard, "check_operands", on_operands, undo)
        _patch(triton_launch, "_check_one_element", on_one_element, undo)
        _patch(interpreter, "_implicit_cvt", on_arg, undo)
        _patch(interpreter.GridExecutor, "__call__", on_call, undo)
        _patch(builder, "create_masked_load", on_load, undo)
        _patch(builder, "create_masked_store", on_store, undo)
        _active.append(ext)
        yield
    finally:
        if _active:
            _active.pop()
        for u in reversed(undo):
            u()


def active() -> bool:
    """Whether accesses are being checked now."""
    return bool(_active)


def enable_from_env() -> None:
    """Open :func:`bounds_checked` for the rest of the process when
    ``REIMPL_TRITON_BOUNDS=1`` and the Triton interpreter is on."""
    if os.environ.get("REIMPL_TRITON_BOUNDS") == "1" and os.environ.get("TRITON_INTERPRET") == "1":
        ctx = bounds_checked()
        ctx.__enter__()
        _for_process.append(ctx)  # (a dropped generator would close, undoing the patches)
