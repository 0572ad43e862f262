"""Constructor checks, with torch's exception types and labels and messages of our own.

torch validates an optimizer's hyperparameters when it is built (``ValueError``, naming
the value as "learning rate", "epsilon value", ...); these are the shared pieces, so each
optimizer's ``__init__`` states its rules in a line or two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor


def check_nonnegative(name: str, value: Any, *, nan_ok: bool = False) -> None:
    """Raise ``ValueError`` unless ``0 <= value``. NaN fails too, unless ``nan_ok`` (torch's
    SGD only rejects values below zero, so NaN gets through there)."""
    if (value < 0.0) if nan_ok else not (value >= 0.0):
        raise ValueError(f"Invalid {name}: {value} (it must be >= 0)")


#: how torch's messages name a hyperparameter ("Invalid learning rate: -1")
_LABELS = {"lr": "learning rate", "eps": "epsilon value"}


def check_hparams(*, nan_ok: bool = False, **values: Any) -> None:
    """:func:`check_nonnegative` for each keyword, in order, with torch's labels; a Tensor
    ``lr`` must hold exactly one element."""
    lr = values.get("lr")
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError(f"lr given as a Tensor must have exactly one element, got {lr.numel()}")
    for name, value in values.items():
        check_nonnegative(_LABELS.get(name, f"{name} value"), value, nan_ok=nan_ok)


def check_tensor_hparam(name: str, value: Any, *, foreach: bool | None, capturable: bool) -> None:
    """A hyperparameter given as a Tensor must hold one element, and the multi-tensor path
    can only take it when ``capturable=True`` (its ops need Python numbers otherwise)."""
    if not isinstance(value, Tensor):
        return
    if foreach and not capturable:
        raise ValueError(
            f"{name} given as a Tensor needs capturable=True when foreach=True "
            "(pass a float, or set capturable=True, or foreach=False)"
        )
    if value.numel() != 1:
        raise ValueError(
            f"{name} given as a Tensor must have exactly one element, got {value.numel()}"
        )


def check_betas(betas: Sequence[Any]) -> None:
    """Each beta of an Adam-family optimizer lies in [0, 1): ``ValueError`` otherwise."""
    for i in (0, 1):  # by index, as torch: a one-element pair is an IndexError
        beta = betas[i]
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta} (need 0 <= beta < 1)")


def check_adam_family(
    lr: Any, eps: Any, betas: Sequence[Any], weight_decay: Any, **more: Any
) -> None:
    """The Adam family's constructor checks in torch's order: lr, eps, the betas, the
    weight decay, then any of the optimizer's own (``momentum_decay``...)."""
    check_hparams(lr=lr, eps=eps)
    check_betas(betas)
    check_hparams(weight_decay=weight_decay, **more)
