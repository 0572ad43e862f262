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

* :func:`check_dense` -- the same contract for the layer and loss kernels (norms, batch
  norm, the pointwise losses), whose operands are a handful of named tensors in one dtype
  rather than lists by role: each plain, on the CPU, dense in its memory format, exactly
  the elements the kernel walks within its storage.

All cost O(number of tensors), never O(elements).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Collection, Mapping, Sequence
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Roles",
    "ShapeOf",
    "check_dense",
    "check_disjoint",
    "check_like_params",
    "check_operands",
    "describe",
    "plain_cpu",
]

#: (name, tensors) pairs: roles[0] are the params, then the grads, then the states; a
#: None list is a state this configuration does not have, a None entry one not yet made
Roles = Sequence[tuple[str, Sequence[Tensor | None] | None]]
#: role name -> the shape its tensor has for a parameter of a given shape, where that is not
#: the parameter's own (Adafactor's factored second moment); None: that parameter keeps none
ShapeOf = Mapping[str, Callable[[torch.Size], Sequence[int] | None]]

_PLAIN = (Tensor, torch.nn.Parameter)
#: (name, tensor or None, element count the kernel walks, the memory format it reads)
Operand = tuple[str, Tensor | None, int, torch.memory_format]


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


_Meta = tuple[torch.Size, torch.dtype, torch.device]


def _metas(params: Sequence[Tensor]) -> list[_Meta]:
    """Each parameter's (shape, dtype, device), read once per check."""
    return [(p.shape, p.dtype, p.device) for p in params]


def _like(
    where: str, name: str, i: int, t: Any, meta: _Meta, shape_of: ShapeOf | None = None
) -> None:
    if not isinstance(t, Tensor):
        raise _fail(where, name, i, f"is a {type(t).__name__}, not a Tensor")
    own_shape = not shape_of or name not in shape_of
    if own_shape and (t.shape, t.dtype, t.device) == meta and t.layout == torch.strided:
        return  # (the common case in one comparison: this runs per tensor per step)
    shape, dtype, device = meta
    if shape_of and name in shape_of:
        want = shape_of[name](shape)
        if want is None:
            raise _fail(where, name, i, "is given, but a parameter of its shape keeps none")
        if t.shape != tuple(want):
            raise _fail(
                where,
                name,
                i,
                f"has shape {tuple(t.shape)}, where a parameter of shape {tuple(shape)} "
                f"needs {tuple(want)} (a checkpoint saved for another model?)",
            )
    elif t.shape != shape:
        raise _fail(
            where,
            name,
            i,
            f"has shape {tuple(t.shape)} but the parameter has shape {tuple(shape)}"
            " (a checkpoint saved for another model?)",
        )
    if t.dtype != dtype:  # torch's fused and multi-tensor paths refuse it too
        raise _fail(where, name, i, f"is {t.dtype} but the parameter is {dtype}")
    if t.device != device:
        raise _fail(where, name, i, f"is on {t.device} but the parameter on {device}")
    if t.layout != torch.strided:  # (torch's ops raise NotImplementedError here)
        problem = f"has layout {t.layout}; a dense tensor is needed"
        raise _fail(where, name, i, problem, NotImplementedError)


def _params(where: str, roles: Roles) -> Sequence[Tensor]:
    params = roles[0][1]
    assert params is not None
    for name, ts in roles[1:]:
        if ts is not None and len(ts) != len(params):
            raise RuntimeError(f"{where}: {len(ts)} '{name}' tensors for {len(params)} parameters")
    return params  # type: ignore[return-value]


def check_like_params(
    where: str, roles: Roles, *, lone: bool = False, shape_of: ShapeOf | None = None
) -> None:
    """Raise ``RuntimeError`` unless every tensor of every role has its parameter's shape
    (or the one ``shape_of`` gives its role), dtype and device and a strided layout
    (``roles[0]`` are the parameters)."""
    metas = _metas(_params(where, roles))
    for name, ts in roles[1:]:
        for i, t in enumerate(ts or ()):
            if t is not None:
                _like(where, name, -1 if lone else i, t, metas[i], shape_of)


_Span = tuple[int, int, str, int]


def check_operands(
    where: str,
    roles: Roles,
    *,
    device_type: str,
    read: Collection[int] = (1,),
    lone: bool = False,
    strict: bool = True,
    shape_of: ShapeOf | None = None,
) -> bool:
    """Everything :func:`check_like_params` checks, plus what a kernel that walks
    ``numel`` elements from ``data_ptr()`` needs: plain, contiguous tensors on
    ``device_type`` whose storage holds them, and no overlap between a tensor the kernel
    writes (every role not in ``read``: by default all but the grads) and any other
    operand. ``lone``: one tensor per role, named by its role alone in messages.
    ``shape_of``: as in :func:`check_like_params`.

    One pass, every call. A mismatch with the params, a storage too small or an overlap
    raises ``RuntimeError``. Tensors that are valid but that the kernel cannot take (a
    wrapper subclass, a non-contiguous view, another device) raise too when ``strict``;
    otherwise the answer is False, and the caller computes with torch ops instead."""
    params = _params(where, roles)
    ready = True
    for i, p in enumerate(params):  # (the other roles are on their param's device)
        if p.layout != torch.strided or p.device.type != device_type:
            if strict:
                raise _fail(where, "param", -1 if lone else i, f"is on {p.device}, {p.layout}")
            ready = False
    metas = _metas(params)
    written: list[_Span] = []
    inputs: list[_Span] = []
    for r, (name, ts) in enumerate(roles):
        spans = inputs if r in read else written
        for i, t in enumerate(ts or ()):
            if t is None:
                continue
            j = -1 if lone else i
            if r:
                _like(where, name, j, t, metas[i], shape_of)
            if type(t) not in _PLAIN or not t.is_contiguous():
                if strict:
                    problem = "is not contiguous" if type(t) in _PLAIN else "is a tensor subclass"
                    raise _fail(where, name, j, problem + "; the kernel takes plain dense tensors")
                ready = False
                continue
            n = t.nbytes
            if n == 0:
                continue
            if not storage_holds(t):
                raise _fail(where, name, j, "has a storage smaller than its elements")
            lo = t.data_ptr()
            spans.append((lo, lo + n, name, j))
    if ready:
        _disjoint(where, written, inputs)
    return ready


def check_disjoint(
    where: str, roles: Roles, *, read: Collection[int] = (1,), lone: bool = False
) -> None:
    """No tensor that is written (every role not in ``read``) overlaps another operand.
    Only plain contiguous tensors are looked at: a wrapper's ``data_ptr()`` says nothing,
    and a strided view never reaches a kernel (torch ops compute with it)."""
    written: list[_Span] = []
    inputs: list[_Span] = []
    for r, (name, ts) in enumerate(roles):
        for i, t in enumerate(ts or ()):
            if t is None or type(t) not in _PLAIN or not t.is_contiguous() or t.nbytes == 0:
                continue
            lo = t.data_ptr()
            (inputs if r in read else written).append((lo, lo + t.nbytes, name, -1 if lone else i))
    _disjoint(where, written, inputs)


def _disjoint(where: str, written: list[_Span], inputs: list[_Span]) -> None:
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


def storage_holds(t: Tensor) -> bool:
    """``t``'s storage reaches past its last element (a kernel reads ``nbytes`` from
    ``data_ptr()``): false for a storage resized away under it, as FSDP does."""
    return t.storage_offset() * t.element_size() + t.nbytes <= t.untyped_storage().nbytes()


def plain_cpu(
    t: Tensor, dtype: torch.dtype, fmt: torch.memory_format | None = torch.contiguous_format
) -> bool:
    """``t`` is a plain (not a subclass) strided CPU tensor of ``dtype``, dense in ``fmt``
    (None: in any layout): what a CPU layer or loss kernel can take, asked beforehand."""
    return (
        type(t) in _PLAIN
        and t.is_cpu
        and t.layout == torch.strided
        and t.dtype == dtype
        and (fmt is None or t.is_contiguous(memory_format=fmt))
    )


def check_dense(
    where: str, dtype: torch.dtype, read: Sequence[Operand], written: Sequence[Operand] = ()
) -> None:
    """Every operand a CPU layer or loss kernel walks from ``data_ptr()``: a plain strided
    CPU tensor of ``dtype``, dense in its memory format, holding exactly its element count
    within its storage; and nothing written overlapping another operand (a tensor dense in
    any format covers one span of memory). ``RuntimeError`` naming the first that is not.
    Outputs a binding allocates itself need not be passed: they are fresh."""
    spans: list[list[_Span]] = [[], []]  # read, written
    for side, operands in enumerate((read, written)):
        for name, t, n, fmt in operands:
            if t is None:
                continue
            if not (
                type(t) in _PLAIN
                and t.dtype == dtype
                and t.is_cpu
                and t.layout == torch.strided
                and t.is_contiguous(memory_format=fmt)
            ):
                raise RuntimeError(
                    f"{where}: {name} must be a plain dense CPU tensor of {dtype} in {fmt}, "
                    f"got {type(t).__name__} {t.dtype} on {t.device} with strides {t.stride()}"
                )
            if t.numel() != n:
                raise RuntimeError(
                    f"{where}: {name} has {t.numel()} elements, the kernel walks {n}"
                )
            nbytes = t.nbytes
            if not storage_holds(t):
                raise RuntimeError(f"{where}: {name} has a storage smaller than its elements")
            if written and nbytes:
                lo = t.data_ptr()
                spans[side].append((lo, lo + nbytes, name, -1))
    if written:
        _disjoint(where, spans[1], spans[0])
