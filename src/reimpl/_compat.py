"""Differences between the supported torch versions that reimpl follows (the installed
torch decides: reimpl behaves as the torch it runs with)."""

from __future__ import annotations

import re

import torch

__all__ = ["TORCH_VERSION", "torch_at_least"]


def _parse(version: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


#: (major, minor) of the installed torch
TORCH_VERSION = _parse(torch.__version__)


def torch_at_least(major: int, minor: int) -> bool:
    return (major, minor) <= TORCH_VERSION
