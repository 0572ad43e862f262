"""Helpers shared by the loss functions: accumulation dtype, compile detection, the
non-differentiable-weight rule and the size-mismatch warning."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

LOW_PRECISION = (torch.float16, torch.bfloat16)


def compiling() -> bool:
    return torch.compiler.is_compiling()


def acc(x: Tensor) -> Tensor:
    """float16/bfloat16 are accumulated in float32, as torch's kernels do."""
    return x.float() if x.dtype in LOW_PRECISION else x


def check_not_differentiable(fn: str, **tensors: Tensor | None) -> None:
    # torch refuses gradients for class/positive weights; so do we, rather than
    # silently returning a gradient torch would never give.
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if t is not None and t.requires_grad:
            raise RuntimeError(
                f"{fn} is not differentiable with respect to '{name}'; "
                f"pass a tensor with requires_grad=False (e.g. {name}.detach())."
            )


def warn_size_mismatch(input: Tensor, target: Tensor) -> None:
    if target.size() != input.size():
        warnings.warn(
            f"target size {tuple(target.size())} differs from input size {tuple(input.size())}; "
            "the two are broadcast together, which is likely not what you want. "
            "Make them the same size.",
            UserWarning,
            stacklevel=3,
        )
