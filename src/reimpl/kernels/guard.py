"""The checks every tensor passes before a native kernel (C or Triton) sees its address.

A native kernel trusts what it is given: it reads and writes ``numel`` elements of every
role from one base address. A checkpoint is untrusted input, so a state tensor that does
not fit its parameter (another size, dtype or device, a sparse layout) must be refused
before its address is taken; otherwise a wrong size means writing past the end of a heap
block. Two levels:

* :func:`check_like_params` -- torch's rules: every gradient and state tensor has its
  parameter's shape, dtype and device and a strided layout. A mismatch raises
  ``RuntimeError`` (``NotImplementedError``, a subclass, for a sparse state: the types
  torch's own paths raise for them), naming the parameter's
  index and the state key. Every ``fused=True`` step runs it first, whichever path then
  computes, so a mismatch is never stepped with; and :func:`check_disjoint` with it, so a
  state that shares memory with another is refused on every fused path alike.
* :func:`check_operands` -- the kernel's contract on top: plain tensors (a wrapper such as
  DTensor has no storage of its own), dense and contiguous, the storage really holding
  the elements, and no overlap between a tensor the kernel writes and any other operand.
  The batch builders (``cpu_fused.call``, the Triton launchers) run it on every call, so
  no kernel can be reached around it.

Both cost O(number of tensors), never O(elements).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Collection, Sequence
from itertools import pairwise

import torch
from torch import Tensor

__all__ = ["Roles", "check_disjoint", "check_like_params", "check_operands", "describe"]

#: (name, tensors) pairs: roles[0] are the params, then the grads, then the states; a
#: None list is a state this configuration does not have, a None entry one not yet made
Roles = Sequence[tuple[str, Sequence[Tensor | None] | None]]

_PLAIN = (Tensor, torch.nn.Parameter)


def describe(name: str, i: int) -> str:
    if i < 0:  # a lone operand (the loss kernels)
        return name
    if name == "param":
        return f"parameter {i}"
    if name == "grad":
        return f"the gradient of parameter {i}"
    return f"state '{name}' of parameter {i}"


def _fail(
    where: str, name: str, i: int, problem: str, kind: type[RuntimeError] = RuntimeError
) -> RuntimeError:
    return kind(f"{where}: {describe(name, i)} {problem}")


def check_like_params(where: str, roles: Roles, *, lone: bool = False) -> None:
    """Raise ``RuntimeError`` unless every tensor of every role has its parameter's shape,
    dtype and device and a strided layout (``roles[0]`` are the parameters)."""
    params = roles[0][1]
    assert params is not None
    k = len(params)
    for name, ts in roles[1:]:
        if ts is None:
            continue
        if len(ts) != k:
            raise RuntimeError(f"{where}: {len(ts)} '{name}' tensors for {k} parameters")
        for i, t in enumerate(ts):
            if t is None:
                continue
            p = params[i]
            i = -1 if lone else i
            assert p is not None
            if not isinstance(t, Tensor):
                raise _fail(where, name, i, f"is a {type(t).__name__}, not a Tensor")
            if t.shape != p.shape:
                raise _fail(
                    where,
                    name,
                    i,
                    f"has shape {tuple(t.shape)} but the parameter has shape {tuple(p.shape)}"
                    " (a checkpoint saved for another model?)",
                )
            if t.dtype != p.dtype:
                raise _fail(
                    where, name, i, f"is {t.dtype} but the parameter is {p.dtype}"
                )  # torch's fused and multi-tensor paths refuse it too
            if t.device != p.device:
                raise _fail(where, name, i, f"is on {t.device} but the parameter on {p.device}")
            if t.layout != torch.strided:  # (torch's ops raise NotImplementedError here)
                problem = f"has layout {t.layout}; a dense tensor is needed"
                raise _fail(where, name, i, problem, NotImplementedError)


def _span(t: Tensor) -> tuple[int, int]:
    start = t.data_ptr()
    return start, start + t.numel() * t.element_size()


def check_operands(
    where: str,
    roles: Roles,
    *,
    device_type: str,
    read: Collection[int] = (1,),
    lone: bool = False,
) -> None:
    """Everything :func:`check_like_params` checks, plus what a kernel that walks
    ``numel`` elements from ``data_ptr()`` needs: plain, contiguous tensors on
    ``device_type`` whose storage holds them, and no overlap between a tensor the kernel
    writes (every role not in ``read``: by default all but the grads) and any other
    operand. ``lone``: one tensor per role, named by its role alone in messages.
    Raises ``RuntimeError``; a caller that can compute without the kernel (a
    non-contiguous state, say) decides that before, with ``usable``-style checks."""
    check_like_params(where, roles, lone=lone)
    for name, ts in roles:
        for i, t in enumerate(ts or ()):
            if t is None:
                continue
            j = -1 if lone else i
            if type(t) not in _PLAIN:
                kind = type(t).__name__
                raise _fail(where, name, j, f"is a {kind}; the kernel takes plain tensors")
            if t.device.type != device_type:
                raise _fail(where, name, j, f"is on {t.device}; this kernel runs on {device_type}")
            if not t.is_contiguous():
                raise _fail(where, name, j, "is not contiguous")
            if t.numel() == 0:
                continue
            storage = t.untyped_storage()
            if (t.storage_offset() + t.numel()) * t.element_size() > storage.nbytes():
                raise _fail(where, name, j, "has a storage smaller than its elements")
    check_disjoint(where, roles, read=read, lone=lone)


def check_disjoint(
    where: str, roles: Roles, *, read: Collection[int] = (1,), lone: bool = False
) -> None:
    """No tensor that is written (every role not in ``read``) overlaps another operand.
    Only plain contiguous tensors are looked at: a wrapper's ``data_ptr()`` says nothing,
    and a strided view never reaches a kernel (torch ops compute with it)."""
    written: list[tuple[int, int, str, int]] = []
    inputs: list[tuple[int, int, str, int]] = []
    for r, (name, ts) in enumerate(roles):
        for i, t in enumerate(ts or ()):
            if t is None or type(t) not in _PLAIN or t.numel() == 0 or not t.is_contiguous():
                continue
            lo, hi = _span(t)
            (inputs if r in read else written).append((lo, hi, name, -1 if lone else i))
    written.sort()
    for a, b in pairwise(written):
        if b[0] < a[1]:
            raise _fail(where, b[2], b[3], f"shares memory with {describe(a[2], a[3])}")
    # written spans are disjoint and sorted, so their ends increase too: the only one that
    # can overlap [lo, hi) is the last one starting before hi
    starts = [w[0] for w in written]
    for lo, hi, name, i in inputs:
        j = bisect_left(starts, hi) - 1
        if j >= 0 and written[j][1] > lo:
            w = written[j]
            raise _fail(where, w[2], w[3], f"shares memory with {describe(name, i)}")
