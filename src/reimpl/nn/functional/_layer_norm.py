"""Layer normalization (Ba, Kiros & Hinton 2016) and RMS normalization (Zhang & Sennrich
2019) over the trailing ``normalized_shape`` dimensions, functional forms.

Layer norm centers and scales each sample by its own statistics, so (unlike batch norm)
it behaves the same in training and evaluation and for any batch size; RMS norm drops
the centering and the bias, rescaling by the root mean square alone, which is cheaper
and in practice as good for transformers.

The arithmetic is the shared :class:`~._normalize.Normalize` Function (one group of
``prod(normalized_shape)`` channels per row); under ``torch.func`` transforms,
forward-mode AD and ``torch.compile``, and for complex RMS inputs, the composite form
(:mod:`._norm_composite`) runs instead, which every transform can follow.

Dtypes, as torch's CPU kernels: layer norm wants the weight and bias in the input's
dtype, or float32 beside a 16-bit input; RMS norm takes a weight of any dtype (the
product is formed in the promoted dtype and the result cast back to the input's). One
difference: torch warns, once per process, that an RMS weight of another dtype than the
input "cannot dispatch to fused implementation"; reimpl has no such second path, so it
does not.

Autocast: neither is on CPU's lists (arguments as they are); on CUDA ``layer_norm`` runs
in float32 (result float32), while ``rms_norm``, not listed, computes in float32 inside
and returns the input's dtype, as torch's CUDA paths do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from reimpl.kernels.cpu_norm import LAYER, RMS, Layout
from reimpl.nn.functional import _autocast
from reimpl.nn.functional import _norm_composite as C
from reimpl.nn.functional._common import compiling as _compiling
from reimpl.nn.functional._common import transformed as _transformed
from reimpl.nn.functional._common import vmapped as _vmapped
from reimpl.nn.functional._normalize import Normalize, Plan

_HALVES = (torch.float16, torch.bfloat16)


def _shape_list(fn: str, normalized_shape: Sequence[int]) -> list[int]:
    """``normalized_shape`` as a list of ints; TypeError for anything else (an int too,
    which torch's functional forms refuse; the modules accept one)."""
    if isinstance(normalized_shape, (list, tuple, torch.Size)):
        dims = list(normalized_shape)
        if all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
            return dims
    raise TypeError(
        f"{fn}: normalized_shape must be a list, tuple or torch.Size of ints, "
        f"not {normalized_shape!r}"
    )


def _check_shapes(
    fn: str,
    input: Tensor,
    shape: list[int],
    params: dict[str, Tensor | None],
    *,
    rank_error: type[Exception] = RuntimeError,
) -> None:
    if not shape:
        raise RuntimeError(f"{fn}: normalized_shape is empty; give at least one dimension")
    for name, p in params.items():
        if p is not None and list(p.shape) != shape:
            raise RuntimeError(
                f"{fn}: {name} must have the shape normalized_shape={shape}, "
                f"but has shape {list(p.shape)}"
            )
    if input.dim() < len(shape):
        raise rank_error(
            f"{fn}: normalized_shape={shape} needs an input of at least {len(shape)} "
            f"dimensions, got a {input.dim()}-D input"
        )
    if list(input.shape[input.dim() - len(shape) :]) != shape:
        raise RuntimeError(
            f"{fn}: the input's trailing dimensions {list(input.shape)} do not end in "
            f"normalized_shape={shape}"
        )


def check_param_dtypes(fn: str, input: Tensor, params: dict[str, Tensor | None]) -> None:
    """Layer and group norm's dtype rule: parameters in the input's dtype, or all float32
    beside a 16-bit input; RuntimeError otherwise."""
    given = {k: v for k, v in params.items() if v is not None}
    if all(v.dtype == input.dtype for v in given.values()):
        return
    if input.dtype not in _HALVES:
        raise RuntimeError(
            f"{fn}: the parameters' dtypes {[v.dtype for v in given.values()]} differ from "
            f"the input's {input.dtype}; only a float16/bfloat16 input may have float32 "
            "parameters"
        )
    for k, v in given.items():
        if v.dtype != torch.float32:
            raise RuntimeError(
                f"{fn}: a {input.dtype} input takes parameters in its own dtype or all in "
                f"float32; {k} is {v.dtype}"
            )


def check_floating(fn: str, input: Tensor, *, complex_ok: bool = False) -> None:
    """NotImplementedError for an input torch has no kernel for (integers, bool; complex
    unless ``complex_ok``)."""
    if not (input.is_floating_point() or (complex_ok and input.is_complex())):
        raise NotImplementedError(f"{fn} is not implemented for {input.dtype} inputs")


def _rows(input: Tensor, shape: list[int]) -> Layout:
    size = math.prod(shape)
    return Layout(input.numel() // size if size else 0, 1, size, 1)


def _fast(input: Tensor) -> bool:
    """The Function (kernels or closed-form torch ops) serves this call; otherwise the
    composite form, which transforms, compile and empty or complex inputs need."""
    return input.numel() > 0 and not input.is_complex() and not _compiling() and not _transformed()


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """(x − mean) / sqrt(var + eps) · weight + bias over the last
    ``len(normalized_shape)`` dimensions (biased variance), as ``torch.nn.functional``'s."""
    ac = _autocast.active(input)
    if ac is None:
        return _layer_norm(input, normalized_shape, weight, bias, eps)
    with _autocast.off(ac):
        input, weight, bias = cuda_fp32(ac, input, weight, bias)
        return _layer_norm(input, normalized_shape, weight, bias, eps)


def cuda_fp32(
    ac: str, input: Tensor, weight: Tensor | None, bias: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Layer and group norm's autocast policy for the arguments: fp32 on CUDA's list (each
    eligible tensor in float32), on no CPU list (as they are)."""
    if ac != "cuda":
        return input, weight, bias
    return _autocast.fp32(ac, input), _autocast.fp32_opt(ac, weight), _autocast.fp32_opt(ac, bias)


def _layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    fn = "layer_norm"
    shape = _shape_list(fn, normalized_shape)
    params = {"weight": weight, "bias": bias}
    check_param_dtypes(fn, input, params)  # (before the shapes, as torch)
    _check_shapes(fn, input, shape, params)
    check_floating(fn, input)

    def composite(x: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
        return C.layer_norm(x, shape, w, b, eps)

    if not _fast(input):
        return composite(input, weight, bias)
    plan = Plan(_rows(input, shape), eps, LAYER, composite)
    out: Tensor = Normalize.apply(input, weight, bias, plan)
    return out


def rms_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """x / sqrt(mean(x²) + eps) · weight over the last ``len(normalized_shape)``
    dimensions, as ``torch.nn.functional``'s; ``eps`` None: the machine epsilon of the
    computing dtype (float32 for 16-bit and float32 inputs, float64 for float64)."""
    ac = _autocast.active(input)
    if ac is None:
        return _rms_norm(input, normalized_shape, weight, eps)
    with _autocast.off(ac):  # on no autocast list: arguments as they are
        return _rms_norm(input, normalized_shape, weight, eps)


def _rms_norm(
    input: Tensor, normalized_shape: Sequence[int], weight: Tensor | None, eps: float | None
) -> Tensor:
    fn = "rms_norm"
    shape = _shape_list(fn, normalized_shape)
    _check_shapes(fn, input, shape, {"weight": weight}, rank_error=ValueError)
    check_floating(fn, input, complex_ok=True)
    keep_format = not _vmapped()

    def composite(x: Tensor, w: Tensor | None, _: Tensor | None = None) -> Tensor:
        return C.rms_norm(x, shape, w, eps, keep_format)

    if not _fast(input):
        return composite(input, weight)
    plan = Plan(_rows(input, shape), C.rms_eps(input.dtype, eps), RMS, composite)
    return C.keep_channels_last(Normalize.apply(input, weight, None, plan), input)
