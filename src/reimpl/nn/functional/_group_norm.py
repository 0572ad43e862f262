"""Group normalization (Wu & He 2018), functional form.

The channels of each sample are split into ``num_groups`` groups, and each group is
normalized by its own mean and (biased) variance over its channels and positions, then
scaled and shifted per channel. Statistics never mix samples, so small or uneven batches
do not change a sample's result (what makes it a batch norm replacement for detection
and segmentation models trained with a few images per device). ``num_groups = 1`` is
layer norm over (C, *); ``num_groups = C`` is instance norm.

The arithmetic is the shared :class:`~._normalize.Normalize` Function over
``(N, G, C/G, S)``; channels-last inputs are computed contiguously and returned
channels-last, as torch returns them. Under ``torch.func`` transforms, forward-mode AD
and ``torch.compile`` the composite form (:mod:`._norm_composite`) runs instead.

Dtypes are layer norm's (parameters in the input's dtype, or float32 beside a 16-bit
input). Autocast: on no CPU list (arguments as they are); float32 on CUDA's.
"""

from __future__ import annotations

import math

from torch import Tensor

from reimpl._compat import torch_at_least
from reimpl.kernels.cpu_norm import GROUP, Layout
from reimpl.nn.functional import _autocast
from reimpl.nn.functional import _norm_composite as C
from reimpl.nn.functional._common import compiling as _compiling
from reimpl.nn.functional._common import transformed as _transformed
from reimpl.nn.functional._common import vmapped as _vmapped
from reimpl.nn.functional._layer_norm import check_floating, check_param_dtypes, cuda_fp32
from reimpl.nn.functional._normalize import Normalize, Plan


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Group normalization of an ``(N, C, *)`` input, as ``torch.nn.functional``'s."""
    ac = _autocast.active(input)
    if ac is None:
        return _group_norm(input, num_groups, weight, bias, eps)
    with _autocast.off(ac):
        input, weight, bias = cuda_fp32(ac, input, weight, bias)
        return _group_norm(input, num_groups, weight, bias, eps)


def _check(input: Tensor, num_groups: int, params: dict[str, Tensor | None]) -> None:
    """torch's checks, in torch's order (its exception types)."""
    fn = "group_norm"
    if input.dim() < 2:
        raise RuntimeError(f"{fn}: expected an (N, C, *) input, got a {input.dim()}-D input")
    # A group of one value normalizes to 0 (its variance is 0): refused as batch norm
    # does. The count is torch's, N * (C // num_groups) * spatial, with Python's floor
    # division (so num_groups = 0 raises ZeroDivisionError, as in torch).
    count = input.size(0) * input.size(1) // num_groups
    for s in input.shape[2:]:
        count *= s
    if count == 1:
        raise ValueError(
            "Expected more than 1 value per channel when training: group_norm of input size "
            f"{list(input.shape)} with {num_groups} groups leaves one value per group"
        )
    if not isinstance(num_groups, int) or isinstance(num_groups, bool):
        raise TypeError(f"{fn}: num_groups must be an int, not {type(num_groups).__name__}")
    if num_groups <= 0:
        raise RuntimeError(f"{fn}: num_groups must be positive, got {num_groups}")
    channels = input.size(1)
    if channels == 0 and torch_at_least(2, 14):  # earlier torch returns the empty result
        raise RuntimeError(f"{fn}: the input {list(input.shape)} has no channels")
    if channels % num_groups:
        raise RuntimeError(
            f"{fn}: the input's {channels} channels (dim 1 of {list(input.shape)}) cannot be "
            f"split into {num_groups} equal groups"
        )
    for name, p in params.items():
        if p is not None and (p.dim() != 1 or p.numel() != channels):
            raise RuntimeError(
                f"{fn}: {name} must be a vector of one value per channel ({channels}), but "
                f"has shape {list(p.shape)}"
            )
    check_param_dtypes(fn, input, params)
    check_floating(fn, input)


def _group_norm(
    input: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    _check(input, num_groups, {"weight": weight, "bias": bias})
    keep_format = not _vmapped()

    def composite(x: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
        return C.group_norm(x, num_groups, w, b, eps, keep_format)

    if input.numel() == 0 or _compiling() or _transformed():
        return composite(input, weight, bias)
    n, channels = input.shape[:2]
    layout = Layout(n * num_groups, num_groups, channels // num_groups, math.prod(input.shape[2:]))
    out = Normalize.apply(input, weight, bias, Plan(layout, eps, GROUP, composite))
    return C.keep_channels_last(out, input)
