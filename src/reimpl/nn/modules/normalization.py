"""LayerNorm, RMSNorm and GroupNorm: torch's constructor signatures, defaults, parameter
names (``weight``, ``bias``), ``reset_parameters`` and repr, over
:func:`reimpl.nn.functional.layer_norm`, ``rms_norm`` and ``group_norm``.

Each class subclasses the ``torch.nn`` class it replaces (so ``isinstance`` checks in
torch and in other libraries -- e.g. the "no weight decay on norm layers" parameter
groups -- treat it as torch's), with every method torch's class defines written again
here, so no torch normalization code runs; a ``state_dict`` moves both ways. Under
TorchScript ``forward`` runs the composite form (:mod:`..functional._norm_composite`).
"""

import inspect
import numbers
from typing import Any, Optional, Tuple  # noqa: UP035  (TorchScript reads these forms)

import torch
from torch import Tensor
from torch.nn import Parameter, init

from reimpl._compat import NORM_BIAS, drop_keyword
from reimpl.nn import functional as F
from reimpl.nn.functional import _norm_composite as C


def _shape_tuple(normalized_shape: Any) -> tuple[int, ...]:
    """An int is one trailing dimension; a sequence is taken as it is (torch's rule)."""
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(normalized_shape)


def _ones_and_zeros(weight: Tensor | None, bias: Tensor | None) -> None:
    if weight is not None:
        init.ones_(weight)
    if bias is not None:
        init.zeros_(bias)


def _register_affine(
    module: torch.nn.Module, shape: Any, weight: bool, bias: bool | None, device: Any, dtype: Any
) -> None:
    """``weight`` and ``bias`` parameters of ``shape`` (uninitialized), or None where absent,
    under torch's names; the three layers differ only in which they keep. ``bias=None``: no
    bias slot at all (RMSNorm, as torch's)."""
    slots = (("weight", weight),) if bias is None else (("weight", weight), ("bias", bias))
    for name, keep in slots:
        value = Parameter(torch.empty(shape, device=device, dtype=dtype)) if keep else None
        module.register_parameter(name, value)


class LayerNorm(torch.nn.LayerNorm):
    """Layer normalization over the trailing ``normalized_shape`` dimensions, with a
    per-element ``weight`` (ones) and ``bias`` (zeros) when ``elementwise_affine``."""

    normalized_shape: Tuple[int, ...]  # noqa: UP006
    eps: float
    elementwise_affine: bool

    def __init__(
        self, normalized_shape: Any, eps: float = 1e-5, elementwise_affine: bool = True,
        bias: bool = True, device: Any = None, dtype: Any = None,
    ) -> None:  # fmt: skip
        torch.nn.Module.__init__(self)  # nn.Module's set-up only, not torch's LayerNorm's
        self.normalized_shape = _shape_tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        affine = elementwise_affine
        _register_affine(self, self.normalized_shape, affine, affine and bias, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight to 1 and bias to 0 (when present)."""
        _ones_and_zeros(self.weight, self.bias)

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            shape = [d for d in self.normalized_shape]
            return C.layer_norm(input, shape, self.weight, self.bias, self.eps)
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}"
            + (f", bias={self.bias is not None}" if NORM_BIAS else "")
        )


class RMSNorm(torch.nn.RMSNorm):
    """Root-mean-square normalization over the trailing ``normalized_shape`` dimensions,
    with a per-element ``weight`` (ones) when ``elementwise_affine``; ``eps`` None: the
    machine epsilon of the computing dtype."""

    normalized_shape: Tuple[int, ...]  # noqa: UP006
    eps: Optional[float]  # noqa: UP045
    elementwise_affine: bool

    def __init__(
        self, normalized_shape: Any, eps: float | None = None, elementwise_affine: bool = True,
        device: Any = None, dtype: Any = None,
    ) -> None:  # fmt: skip
        torch.nn.Module.__init__(self)
        self.normalized_shape = _shape_tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        _register_affine(self, self.normalized_shape, elementwise_affine, None, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight to 1 (when present)."""
        _ones_and_zeros(self.weight, None)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            shape = [d for d in self.normalized_shape]
            return C.rms_norm(x, shape, self.weight, self.eps)
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )


class GroupNorm(torch.nn.GroupNorm):
    """Group normalization of ``(N, C, *)`` inputs in ``num_groups`` groups of channels,
    with a per-channel ``weight`` (ones) and ``bias`` (zeros) when ``affine``."""

    num_groups: int
    num_channels: int
    eps: float
    affine: bool

    def __init__(
        self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
        device: Any = None, dtype: Any = None, *, bias: bool = True,
    ) -> None:  # fmt: skip
        torch.nn.Module.__init__(self)
        if num_channels % num_groups != 0:  # (num_groups 0: ZeroDivisionError, as torch)
            raise ValueError(
                f"GroupNorm: num_channels ({num_channels}) must be a multiple of "
                f"num_groups ({num_groups})"
            )
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        _register_affine(self, num_channels, affine, affine and bias, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight to 1 and bias to 0 (when present)."""
        _ones_and_zeros(self.weight, self.bias)

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return C.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        text = f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
        return text + f", bias={self.bias is not None}" if GROUP_NORM_BIAS else text


#: whether the installed torch's GroupNorm (our base class) takes ``bias`` and shows it in
#: its repr (torch 2.13 on); ours takes it and shows it where the installed torch does
GROUP_NORM_BIAS = "bias" in inspect.signature(GroupNorm.__bases__[0]).parameters
if not GROUP_NORM_BIAS:
    drop_keyword(GroupNorm, "bias")
