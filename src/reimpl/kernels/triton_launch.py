"""Launching the multi-tensor Triton optimizer kernels (``triton_optim``,
``triton_optim_rules``): the block map that sends each program to (tensor, element offset),
the int64 tables of data pointers per tensor role (and per one-element state: step
counters, NAdam's ``mu_product``, ...), their caches, the per-call checks, and the
arguments every kernel shares.

The block map is cached by the params' sizes and each address table by its tensors'
addresses (uploaded asynchronously from pinned memory when built), so steady-state steps
only read ``data_ptr()``/``numel()`` on the host. Every call checks every tensor first
(``reimpl.kernels.guard``): a cached address may hold another tensor by now.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from reimpl.kernels import guard
from reimpl.kernels.triton_common import _steps_kernel

#: (name, tensors): a one-element per-param state besides the step counters
Scalars = Sequence[tuple[str, Sequence[Tensor]]]

_BLOCK = 1024
_NUM_WARPS = 4
_ELEMENT = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
}


# --------------------------------------------------------------------------- launching


class _Plan(NamedTuple):
    """Device tables for one list of tensors: block map, sizes, one address table per role."""

    blk_tensor: Tensor  # int32 [n_blocks]: which tensor a program updates
    blk_start: Tensor  # int64 [n_blocks]: its first element
    numels: Tensor  # int64 [n_tensors]
    tables: tuple[Tensor, ...]  # int64 [n_tensors] addresses, per role
    steps: Tensor | None  # int64 [n_tensors] addresses of the step counters
    align: int  # 16 when every element tensor is 16-byte aligned (vector loads), else 1
    scalars: tuple[Tensor, ...] = ()  # int64 [n_tensors] addresses, per one-element state


_Key = tuple[Any, ...]
_BLOCK_MAPS: OrderedDict[_Key, tuple[Tensor, Tensor, Tensor]] = OrderedDict()
_ADDRESSES: OrderedDict[_Key, tuple[Tensor, bool]] = OrderedDict()
_MAX_CACHED = 256
_data_ptr = Tensor.data_ptr
_numel = Tensor.numel


def _lookup(cache: OrderedDict[_Key, Any], key: _Key) -> Any:
    hit = cache.get(key)
    if hit is not None:
        cache.move_to_end(key)
    return hit


def _store(cache: OrderedDict[_Key, Any], key: _Key, value: Any) -> Any:
    cache[key] = value
    if len(cache) > _MAX_CACHED:
        cache.popitem(last=False)
    return value


def _to_device(values: list[int] | Tensor, device: torch.device) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.int64)
    if device.type == "cuda":  # asynchronous: the pinned staging buffer outlives the copy
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _block_map(numels: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    n = torch.tensor(numels, dtype=torch.int64)
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    blk_tensor = torch.repeat_interleave(torch.arange(len(numels)), n_blocks)
    first = torch.cumsum(n_blocks, 0) - n_blocks  # each tensor's first block
    blk_start = (torch.arange(len(blk_tensor)) - first[blk_tensor]) * _BLOCK
    blk = _to_device(blk_tensor, device).to(torch.int32)
    return blk, _to_device(blk_start, device), _to_device(n, device)


def _plan(
    roles: Sequence[Sequence[Tensor]],
    names: Sequence[str],
    steps: Sequence[Tensor] | None,
    scalars: Scalars = (),
) -> _Plan:
    """The tables for these tensors, cached: the block map by the params' sizes, each
    address table by its tensors' addresses (so new grads at new addresses rebuild only
    theirs). Every call checks every tensor first (O(tensors)): an address seen before may
    now hold another tensor (the caching allocator reuses freed blocks), so a cache hit
    proves nothing about what lies there. ``scalars``: one-element per-param states (each
    list of one dtype), whose tables come last in ``_Plan.scalars``.
    """
    _check(roles, names, steps, scalars)
    params = roles[0]
    device = params[0].device
    numels = tuple(map(_numel, params))
    every = [*roles, *([steps] if steps is not None else []), *(ts for _, ts in scalars)]
    keys = [(device, tuple(map(_data_ptr, role))) for role in every]
    maps = _lookup(_BLOCK_MAPS, (device, numels))
    entries = [_lookup(_ADDRESSES, key) for key in keys]
    if maps is None:
        maps = _store(_BLOCK_MAPS, (device, numels), _block_map(numels, device))
    for i, key in enumerate(keys):
        if entries[i] is None:
            table = _to_device(list(key[1]), device)
            entries[i] = _store(_ADDRESSES, key, (table, all(p % 16 == 0 for p in key[1])))
    tables = [e[0] for e in entries]
    align = 16 if all(e[1] for e in entries[: len(roles)]) else 1
    blk_tensor, blk_start, numels_t = maps
    n_roles = len(roles)
    return _Plan(
        blk_tensor,
        blk_start,
        numels_t,
        tuple(tables[:n_roles]),
        tables[n_roles] if steps is not None else None,
        align,
        tuple(tables[len(tables) - len(scalars) :]),
    )


def _check(
    roles: Sequence[Sequence[Tensor]],
    names: Sequence[str],
    steps: Sequence[Tensor] | None,
    scalars: Scalars = (),
) -> None:
    """The kernels' contract (``reimpl.kernels.guard.check_operands``: every tensor shaped,
    typed and placed like its param, plain, contiguous, no written tensor overlapping
    another operand) and 1-element float step counters and other one-element states on
    the params' device. RuntimeError naming the parameter and state otherwise."""
    params = roles[0]
    p0 = params[0]
    if p0.dtype not in _ELEMENT:
        raise RuntimeError(f"unsupported param dtype {p0.dtype} (float16/bfloat16/float32/float64)")
    where = "fused optimizer (Triton)"
    guard.check_operands(where, list(zip(names, roles, strict=True)), device_type=p0.device.type)
    for name, ts in [*([("step", steps)] if steps is not None else []), *scalars]:
        _check_one_element(where, name, ts, params)


def _check_one_element(
    where: str, name: str, ts: Sequence[Tensor], params: Sequence[Tensor]
) -> None:
    """A one-element per-param state (a kernel reads and writes one element at its
    address): one plain float32/float64 tensor per param, on the params' device, one
    dtype for the whole list (the kernel is compiled for one), its storage holding it."""
    if len(ts) != len(params):
        raise RuntimeError(f"{where}: {len(ts)} '{name}' tensors for {len(params)} params")
    device, dtype = params[0].device, ts[0].dtype if isinstance(ts[0], Tensor) else None
    for i, s in enumerate(ts):
        if not (
            type(s) in (Tensor, torch.nn.Parameter)
            and s.numel() == 1
            and s.device == device
            and s.dtype == dtype
            and s.dtype in (torch.float32, torch.float64)
            and s.layout == torch.strided
            and guard.storage_holds(s)
        ):
            raise RuntimeError(
                f"{where}: state '{name}' of parameter {i} must be a 1-element float32 or "
                f"float64 tensor on {device}, of one dtype with the others of its batch"
            )


def _device_scalar(x: Tensor | None, device: torch.device, name: str) -> Tensor | None:
    if x is not None and (x.numel() != 1 or x.device != device):
        raise ValueError(f"{name} must be a 1-element tensor on {device}")
    return x


def _common(
    params: Sequence[Tensor],
    plan: _Plan,
    lr: float | Tensor | None,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
) -> dict[str, Any]:
    """Kernel arguments shared by every optimizer: lr (none for a rule without one, as
    Rprop), grad_scale, found_inf, dtypes."""
    device = params[0].device
    if isinstance(lr, Tensor) and lr.device.type == "cpu" and device.type != "cpu":
        lr = float(lr)  # a CPU lr is read on the host (no device sync), as torch does
    lr_t = _device_scalar(lr, device, "lr") if isinstance(lr, Tensor) else None
    scale = _device_scalar(grad_scale, device, "grad_scale")
    inf = _device_scalar(found_inf, device, "found_inf")
    dummy = plan.numels  # an unused pointer argument
    lr_args: dict[str, Any] = {}
    if lr is not None:
        lr_args = {
            "lr": 0.0 if lr_t is not None else float(lr),
            "lr_ptr": lr_t if lr_t is not None else dummy,
            "LR_PTR": lr_t is not None,
        }
    return lr_args | {
        "scale_ptr": scale if scale is not None else dummy,
        "inf_ptr": inf if inf is not None else dummy,
        "HAS_SCALE": scale is not None,
        "HAS_INF": inf is not None,
        "ELT": _ELEMENT[params[0].dtype],
        "ACC": tl.float64 if params[0].dtype == torch.float64 else tl.float32,
        "ALIGN": plan.align,
        "BLOCK": _BLOCK,
        "num_warps": _NUM_WARPS,
    }


#: lanes per program of a per-tensor kernel (one lane per tensor)
_LANES = 128


def _per_tensor(
    kernel: Any, n_tensors: int, found_inf: Tensor | None, *args: Any, **kw: Any
) -> None:
    """Launch a per-tensor kernel (``triton_common._tensor_lanes``) over ``n_tensors``:
    ``kernel(*args, n_tensors, inf_ptr, **kw, HAS_INF=..., BLOCK=...)``."""
    inf = found_inf if found_inf is not None else args[0]  # (unused when there is none)
    kernel[(triton.cdiv(n_tensors, _LANES),)](
        *args, n_tensors, inf, **kw, HAS_INF=found_inf is not None, BLOCK=_LANES
    )


def _increment_steps(steps: Sequence[Tensor], plan: _Plan, found_inf: Tensor | None) -> None:
    assert plan.steps is not None
    _per_tensor(_steps_kernel, len(steps), found_inf, plan.steps, S_ELT=_ELEMENT[steps[0].dtype])
