"""Triton kernels against torch, on CPU through TRITON_INTERPRET=1 (small sizes).

On a CUDA machine these kernels run compiled in the CUDA parity tests instead; the
interpreter cannot share a process with compiled kernels, so this module skips there.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as TF

from reimpl_parity.cases.losses import LOSS_CASES
from reimpl_parity.harness import check_case

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed"),
    pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter tests are for CPU-only CI"),
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1"
    ),
]


@pytest.fixture
def interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REIMPL_TRITON_CPU", "1")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cross_entropy_kernel_parity_table(interpret: None, dtype: torch.dtype) -> None:
    from reimpl.kernels import triton_available

    assert triton_available(torch.empty(1))
    import numpy as np

    case = next(c for c in LOSS_CASES if c.name == "cross_entropy[index]")

    def quiet(*args: Any, **kwargs: Any) -> Any:
        # the interpreter runs on numpy, which warns about inf - inf; a GPU does not
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return case.ours(*args, **kwargs)

    # CPU torch rounds the 16-bit softmax sum and its log before subtracting; the kernel (like
    # torch on CUDA, which it is for) rounds once at the end: allow a few 16-bit ulp. The
    # gradient is softmax - target, with the softmax rounded by torch to 16 bits first: where
    # the two nearly cancel, torch's one-ulp error at the softmax's size (up to 1: 4.9e-4 in
    # float16, 3.9e-3 in bfloat16) is all that is left, hence atol of two such ulps.
    tol = {torch.float16: (4e-3, 1e-3), torch.bfloat16: (3.2e-2, 8e-3)}
    check_case(dataclasses.replace(case, ours=quiet, tol=tol), dtype, "cpu", max_examples=25)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_kernel_many_blocks(
    interpret: None, smoothing: float, weighted: bool
) -> None:
    from reimpl.kernels.triton_cross_entropy import cross_entropy_rows

    g = torch.Generator().manual_seed(0)
    n, c = 3, 300
    x = (torch.randn(n, c, generator=g) * 5).requires_grad_()
    t = torch.tensor([0, 299, 17])
    w = torch.rand(c, generator=g) + 0.5 if weighted else None
    ref = TF.cross_entropy(x, t, weight=w, label_smoothing=smoothing, reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref, x)
    loss, grad = cross_entropy_rows(
        x.detach(), t, w, -100, smoothing, torch.ones(1), True, block=64
    )
    torch.testing.assert_close(loss.sum(), ref.detach())
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_kernel_row_scale_in_place(interpret: None, smoothing: float) -> None:
    """A per-row scale (reduction='none' backward) written over the logits themselves."""
    from reimpl.kernels.triton_cross_entropy import cross_entropy_rows

    g = torch.Generator().manual_seed(1)
    n, c = 4, 300
    x = (torch.randn(n, c, generator=g) * 5).requires_grad_()
    t = torch.tensor([0, 299, -100, 17])
    w = torch.rand(c, generator=g) + 0.5
    up = torch.randn(n, generator=g)
    ref = TF.cross_entropy(x, t, weight=w, label_smoothing=smoothing, reduction="none")
    (ref_grad,) = torch.autograd.grad(ref, x, up)
    buf = x.detach().clone()
    loss, grad = cross_entropy_rows(
        buf, t, w, -100, smoothing, up.reshape(n, 1), True, block=64, in_place=True
    )
    assert grad is not None and grad.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(grad, ref_grad)
    # no gradient: no scale needed, the logits stay as they were
    loss, grad = cross_entropy_rows(x.detach(), t, w, -100, smoothing, None, False)
    assert grad is None
    torch.testing.assert_close(loss, ref.detach())
    with pytest.raises(ValueError, match="scale"):
        cross_entropy_rows(x.detach(), t, w, -100, smoothing, None, True)
