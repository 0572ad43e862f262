"""Device-side pieces every Triton optimizer kernel (``triton_optim``,
``triton_optim_rules``) shares: finding a program's tensor and elements from the block map
and the address tables, the found_inf gate, scalars read from a tensor or given, an exact
integer power and a real one, the gradient as the rules see it (unscaled, signed), torch's
lerp, and the per-tensor pieces (one lane per tensor) that advance the step counters and
other one-element states on the device.

Like ``triton_optim``, no ``from __future__ import annotations``: Triton reads the
annotations (``tl.constexpr``) as objects.
"""

import triton
import triton.language as tl

# mypy: disable-error-code="name-defined"

# --------------------------------------------------------------------------- helpers


@triton.jit
def _base(table, idx, ELT: tl.constexpr, ALIGN: tl.constexpr):
    """The typed data pointer of tensor ``idx`` from an int64 table of addresses."""
    ptr = tl.load(table + idx).to(tl.pointer_type(ELT), bitcast=True)
    if ALIGN > 1:
        ptr = tl.multiple_of(ptr, ALIGN)  # lets full blocks use vector loads
    return ptr


@triton.jit
def _locate(blk_tensor, blk_start, numels, BLOCK: tl.constexpr):
    """This program's tensor index, element offsets and that tensor's length."""
    pid = tl.program_id(0)
    idx = tl.load(blk_tensor + pid)
    start = tl.multiple_of(tl.load(blk_start + pid), BLOCK)
    return idx, start + tl.arange(0, BLOCK).to(tl.int64), start + BLOCK, tl.load(numels + idx)


@triton.jit
def _go(inf_ptr, HAS_INF: tl.constexpr):
    """False when found_inf is given and nonzero: then nothing is touched."""
    if HAS_INF:
        return tl.load(inf_ptr) == 0
    else:
        return True


@triton.jit
def _scalar(value, value_ptr, FROM_PTR: tl.constexpr):
    """A float64 scalar: read from a 1-element tensor, or given as a number."""
    if FROM_PTR:
        return tl.load(value_ptr).to(tl.float64)
    else:
        return tl.full([], value, tl.float64)


@triton.jit
def _pow(base, exponent):
    """``base ** exponent`` for a float64 base and an integer-valued float exponent."""
    r = tl.full([], 1.0, tl.float64)
    b = base
    t = exponent.to(tl.int64)
    while t > 0:
        r = tl.where((t & 1) == 1, r * b, r)
        b = b * b
        t = t >> 1
    return r


@triton.jit
def _grad(
    g_ptr, mask, scale_ptr,
    ELT: tl.constexpr, ACC: tl.constexpr, HAS_SCALE: tl.constexpr, MAXIMIZE: tl.constexpr,
):  # fmt: skip
    """Load the gradient in ACC; unscale it (writing it back) and negate it if asked."""
    g = tl.load(g_ptr, mask=mask).to(ACC)
    if HAS_SCALE:
        g = g / tl.load(scale_ptr).to(ACC)
        tl.store(g_ptr, g.to(ELT), mask=mask)
    if MAXIMIZE:
        g = -g
    return g


@triton.jit
def _lerp(start, end, weight):
    """torch.lerp's formula (exact at both ends)."""
    return tl.where(
        tl.abs(weight) < 0.5, start + weight * (end - start), end - (end - start) * (1 - weight)
    )


@triton.jit
def _powf(base, exponent):
    """``base ** exponent`` in float64 for a base >= 0 and any real exponent (NaN for a
    negative base), as exp(exponent log base): libdevice's float64 exp and log on GPUs."""
    return tl.where(exponent == 0, 1.0, tl.exp(exponent * tl.log(base)))


@triton.jit
def _tensor_lanes(n_tensors, inf_ptr, HAS_INF: tl.constexpr, BLOCK: tl.constexpr):
    """For a per-tensor kernel (one lane per tensor, not per element): this program's
    tensor indices and which to update (none when found_inf is nonzero)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n_tensors
    if HAS_INF:
        mask = tl.where(tl.load(inf_ptr) == 0, mask, False)
    return i, mask


@triton.jit
def _slots(table, i, mask, ELT: tl.constexpr):
    """Typed pointers to the one-element states of tensors ``i``, from an address table."""
    return tl.load(table + i, mask=mask, other=0).to(tl.pointer_type(ELT), bitcast=True)


@triton.jit
def _advance_steps(S, i, mask, S_ELT: tl.constexpr):
    """``steps[i] += 1`` (in the counters' dtype, as torch's ``+= 1``); the new counts, as
    float64."""
    addr = _slots(S, i, mask, S_ELT)
    t = tl.load(addr, mask=mask) + 1
    tl.store(addr, t, mask=mask)
    return t.to(tl.float64)


@triton.jit
def _steps_kernel(
    S, n_tensors, inf_ptr, S_ELT: tl.constexpr, HAS_INF: tl.constexpr, BLOCK: tl.constexpr
):
    """``steps[i] += 1`` for every tensor (nothing when found_inf)."""
    i, mask = _tensor_lanes(n_tensors, inf_ptr, HAS_INF, BLOCK)
    _advance_steps(S, i, mask, S_ELT)
