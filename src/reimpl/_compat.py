"""Differences between the supported torch versions that reimpl follows (the installed
torch decides: reimpl behaves as the torch it runs with)."""

from __future__ import annotations

import functools
import inspect
import re
from typing import Any

import torch

__all__ = ["NORM_BIAS", "TORCH_VERSION", "drop_keyword", "torch_at_least"]


def _parse(version: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


#: (major, minor) of the installed torch
TORCH_VERSION = _parse(torch.__version__)


def torch_at_least(major: int, minor: int) -> bool:
    return (major, minor) <= TORCH_VERSION


#: torch 2.12 gave the batch and instance norms a ``bias=`` keyword and shows ``bias=`` in
#: their repr and LayerNorm's; reimpl's take it, and show it, where the installed torch does
NORM_BIAS = torch_at_least(2, 12)


def drop_keyword(cls: type, name: str) -> None:
    """Make ``cls(...)`` refuse keyword ``name`` and leave it out of the signature: for a
    keyword reimpl's class takes that the installed torch's class does not have yet, so
    what that torch rejects is rejected here too (TypeError, as Python raises for torch)."""
    init: Any = cls.__init__  # type: ignore[misc]
    sig = inspect.signature(init)

    @functools.wraps(init)
    def refusing(self: Any, *args: Any, **kwargs: Any) -> None:
        if name in kwargs:
            raise TypeError(
                f"{cls.__name__}.__init__() got an unexpected keyword argument {name!r} "
                f"(torch {torch.__version__}'s {cls.__name__} has no {name!r} argument)"
            )
        init(self, *args, **kwargs)

    refusing.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[p for p in sig.parameters.values() if p.name != name]
    )
    refusing.__annotations__ = {k: v for k, v in init.__annotations__.items() if k != name}
    refusing.__qualname__ = f"{cls.__qualname__}.__init__"
    setattr(cls, "__init__", refusing)  # noqa: B010
