"""Norm penalties (L1 / L2 regularization terms) and choosing which parameters get them.

* :func:`l1_penalty` — ``Σ |w|`` over the given tensors (lasso; pushes weights to 0).
* :func:`l2_penalty` — ``Σ w²`` over the given tensors (the *squared* L2 norm, no ½).
* :func:`decay_parameters` / :func:`no_decay_parameters` — a module's parameters split the
  usual way: penalize weights of layers such as Linear and Conv, but not biases and not
  the affine parameters of normalization layers (reimpl's BatchNorm, torch's BatchNorm /
  InstanceNorm / SyncBatchNorm / LayerNorm / GroupNorm / RMSNorm / LocalResponseNorm).
* :func:`param_groups` — the two lists as optimizer parameter groups.

Each penalty takes ``strength`` (λ, default 1) and returns a 0-D tensor on the parameters'
device with autograd's gradient (``λ·sign(w)``, ``2λ·w``).

With plain SGD (no momentum), ``loss + (λ/2)·l2_penalty(params)`` follows exactly the
same trajectory as ``weight_decay=λ``; for adaptive optimizers (Adam) the two differ — use
AdamW's decoupled decay there instead.

Example::

    import torch
    import reimpl.nn as nn
    import reimpl.nn.functional as F

    model = torch.nn.Sequential(torch.nn.Linear(10, 32), nn.BatchNorm1d(32),
                                torch.nn.ReLU(), nn.Dropout(0.2), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lam1, lam2 = 1e-5, 1e-4
    for x, y in batches:
        opt.zero_grad()
        decay = F.decay_parameters(model)          # Linear weights only
        loss = (F.mse_loss(model(x), y)
                + F.l1_penalty(decay, strength=lam1)
                + F.l2_penalty(decay, strength=lam2 / 2))
        loss.backward()
        opt.step()
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

# torch's own normalization classes whose parameters are never decayed. torch's batch and
# instance norms are recognised by their common base class name (``_NormBase``), which
# also covers their Lazy and Sync variants.
_TORCH_NORMS: tuple[type[torch.nn.Module], ...] = tuple(
    c
    for c in (
        getattr(torch.nn, name, None)
        for name in ("LayerNorm", "GroupNorm", "RMSNorm", "LocalResponseNorm", "CrossMapLRN2d")
    )
    if isinstance(c, type)
)
_NORM_BASE_NAMES = frozenset({"_NormBase"})


def _as_list(params: Tensor | Iterable[Tensor]) -> list[Tensor]:
    if isinstance(params, Tensor):
        return [params]
    out = list(params)
    for i, p in enumerate(out):
        if not isinstance(p, Tensor):
            raise TypeError(f"penalty: params[{i}] is a {type(p).__name__}, not a Tensor")
    return out


def _total(terms: list[Tensor]) -> Tensor:
    if not terms:
        return torch.zeros(())
    total = terms[0]
    for t in terms[1:]:
        total = total + t.to(total.device)
    return total


def l1_penalty(params: Tensor | Iterable[Tensor], strength: float = 1.0) -> Tensor:
    """``strength · Σ_p Σ_i |p_i|`` over tensors ``params`` (0-D tensor; 0 for none).

    Each tensor's sum is taken in its own dtype and device; the total is on the first one's
    device, in the promoted dtype.
    """
    ps = _as_list(params)
    total = _total([p.abs().sum() for p in ps])
    return total * strength if strength != 1.0 else total


def l2_penalty(params: Tensor | Iterable[Tensor], strength: float = 1.0) -> Tensor:
    """``strength · Σ_p Σ_i p_i²`` — the *squared* L2 norm, without a ½.

    ``(λ/2)·l2_penalty(w)`` has gradient ``λ·w``: SGD's ``weight_decay=λ``.
    """
    ps = _as_list(params)
    total = _total([p.square().sum() for p in ps])
    return total * strength if strength != 1.0 else total


def _is_norm_layer(module: torch.nn.Module) -> bool:
    # torch's batch/instance norms and ours share a base named _NormBase: matched by name,
    # so this module needs no import of the layers (which import the functional package)
    if isinstance(module, _TORCH_NORMS):
        return True
    return any(c.__name__ in _NORM_BASE_NAMES for c in type(module).__mro__)


def _split(module: torch.nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    decay: list[Tensor] = []
    rest: list[Tensor] = []
    seen: set[int] = set()
    for sub in module.modules():
        norm = _is_norm_layer(sub)
        for name, p in sub.named_parameters(recurse=False):
            if id(p) in seen:  # shared parameters are listed once, at first sight
                continue
            seen.add(id(p))
            if norm or name.startswith("bias") or name.endswith("bias") or p.dim() <= 1:
                rest.append(p)
            else:
                decay.append(p)
    return decay, rest


def decay_parameters(module: torch.nn.Module) -> list[Tensor]:
    """Parameters that usually get weight decay / a norm penalty (in registration order).

    Left out: biases (a name starting or ending in ``bias``, e.g. ``bias``, ``bias_ih_l0``),
    every other 0-D/1-D parameter (per-channel scales, PReLU slopes), and all parameters
    of normalization layers. A parameter shared between modules is listed once.
    """
    return _split(module)[0]


def no_decay_parameters(module: torch.nn.Module) -> list[Tensor]:
    """The complement of :func:`decay_parameters` (biases, norm layers, 0-D/1-D tensors)."""
    return _split(module)[1]


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """``[{"params": decay, "weight_decay": weight_decay}, {"params": rest,
    "weight_decay": 0.0}]`` — for ``torch.optim.SGD(param_groups(model, 1e-4), lr=...)``."""
    decay, rest = _split(module)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
