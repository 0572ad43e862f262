"""Optional fast paths. Each has a pure-torch fallback chosen automatically.

``triton_available()`` says whether a Triton kernel should take a tensor: CUDA tensors
with Triton installed; CPU tensors only when asked (``REIMPL_TRITON_CPU=1``) under
``TRITON_INTERPRET=1``, which is how CI tests the kernels without a GPU. Triton reads
``TRITON_INTERPRET`` when a kernel is defined, so it must be set before the first import.
``REIMPL_DISABLE_TRITON=1`` turns the kernels off.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch


@functools.cache
def triton_installed() -> bool:
    # (cached: the lookup walks sys.path, tens of microseconds on every loss call)
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_available(t: torch.Tensor) -> bool:
    """Can a Triton kernel take ``t``? (CUDA, or CPU under the interpreter.)"""
    if not t.is_cuda and not (
        t.device.type == "cpu" and interpreting() and os.environ.get("REIMPL_TRITON_CPU") == "1"
    ):
        return False
    return triton_installed() and os.environ.get("REIMPL_DISABLE_TRITON") != "1"
