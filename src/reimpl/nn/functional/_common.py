"""Helpers shared by the loss functions: accumulation dtype, compile and torch.func /
forward-AD detection, the non-differentiable-weight rule and the size-mismatch warning."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor
from torch.autograd import forward_ad

LOW_PRECISION = (torch.float16, torch.bfloat16)

# torch's private functorch bindings (None where a torch lacks them): see _interpreter_stack
_FUNCTORCH: Any = getattr(torch._C, "_functorch", None)


def compiling() -> bool:
    return torch.compiler.is_compiling()


def _interpreter_stack() -> list[Any] | None:
    """functorch's active transforms, innermost last; None when this torch cannot say.

    Private torch API (``torch._C._functorch``), hence the guarded fallbacks: callers treat
    None as "a transform may be active" and take their conservative path.
    """
    get_stack = getattr(_FUNCTORCH, "get_interpreter_stack", None)
    try:
        if get_stack is not None:
            return list(get_stack() or ())
        peek = getattr(_FUNCTORCH, "peek_interpreter_stack", None)
        if peek is not None:
            top = peek()
            return [] if top is None else [top]
    except Exception:  # any failure: unknown
        return None
    return None


def _forward_ad_active() -> bool:
    """Is a ``torch.autograd.forward_ad.dual_level`` open (unknown: assume so)."""
    level = getattr(forward_ad, "_current_level", None)
    return not isinstance(level, int) or level >= 0


def transformed() -> bool:
    """Is a ``torch.func`` transform (vmap, grad, jvp, ...) or forward-mode AD active?

    Then the fast paths (custom autograd Functions with in-place buffers, C kernels,
    host reads of the upstream gradient) step aside for the composite form, built from
    elementary ops every transform supports. Under ``torch.compile`` the compiled paths
    already avoid them, so this is False there (dynamo need not trace the check).
    """
    if compiling():
        return False
    stack = _interpreter_stack()
    return stack is None or bool(stack) or _forward_ad_active()


def vmapped() -> bool:
    """Is a ``torch.func.vmap`` active (unknown: assume so)? Data-dependent checks, which
    read tensor values on the host, are skipped then, as under ``torch.compile``."""
    if compiling():
        return False
    stack = _interpreter_stack()
    if stack is None:
        return True
    if not stack:
        return False
    vmap_key = getattr(getattr(_FUNCTORCH, "TransformType", None), "Vmap", None)
    try:
        return vmap_key is None or any(i.key() == vmap_key for i in stack)
    except Exception:  # unknown interpreter objects: assume vmap
        return True


def acc(x: Tensor) -> Tensor:
    """float16/bfloat16 are accumulated in float32, as torch's kernels do."""
    return x.float() if x.dtype in LOW_PRECISION else x


def to_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``, converting only when it differs. For what a custom Function's
    forward returns. torch 2.11's torch.compile gives zero gradients through a Function
    whose output is a tensor its last op handed back as itself: a conversion to the dtype
    it already has (``.to``, ``.float()``), ``.contiguous()`` of a contiguous tensor, an
    in-place op (``mul_``, ``out=``). So those outputs come from a fresh op, or from this."""
    return t if t.dtype == dtype else t.to(dtype)


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


def aliases(*ts: Tensor | None) -> tuple[Any, ...]:
    """Views of ``ts`` for a custom Function's double backward, which differentiates its
    composite form with ``torch.autograd.grad``: taken with respect to these aliases, the
    gradients are each input's own partial derivative. Taken with respect to the inputs,
    an input computed from another (a bias made from the weight)
    would have that path counted in the gradient returned and again by the engine."""
    return tuple(None if t is None else t.view_as(t) for t in ts)
