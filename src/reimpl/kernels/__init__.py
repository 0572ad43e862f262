"""Optional fast paths. Each has a pure-torch fallback chosen automatically.

``triton_available()`` says whether Triton kernels can run here: on CUDA tensors with
Triton installed, or on CPU tensors under ``TRITON_INTERPRET=1`` (how CI tests them).
"""

from __future__ import annotations

import importlib.util
import os

import torch


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_available(t: torch.Tensor) -> bool:
    """Can a Triton kernel take ``t``? (CUDA, or CPU under the interpreter.)"""
    if not triton_installed() or os.environ.get("REIMPL_DISABLE_TRITON") == "1":
        return False
    return t.is_cuda or (interpreting() and t.device.type == "cpu")
