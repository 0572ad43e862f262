"""linear_cross_entropy's row step through our Triton cross-entropy kernel, against torch.

On CPU the kernel runs under ``TRITON_INTERPRET=1`` (set by the conftest without CUDA) when
a test opts in with ``REIMPL_TRITON_CPU=1``, at small sizes and in small chunks; a spy on
the binding proves the kernel ran, in place, once per chunk. The CUDA tests (skipped
without a GPU) run it compiled, against torch on the GPU, and check that the peak memory
stays below torch's unchunked ``cross_entropy(linear(...))``.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as TF
from test_linear_cross_entropy import grads_after_two_backwards, loss_kwargs
from torch import Tensor

import reimpl.nn.functional as F
from reimpl.nn.functional import _linear_cross_entropy as lce

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton not installed"
)
# the interpreter cannot share a process with compiled kernels: CPU-only CI runs these
interpreted = pytest.mark.skipif(
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
    reason="interpreter tests: CPU-only, with TRITON_INTERPRET=1",
)


def torch_lce(x: Tensor, w: Tensor, t: Tensor, *, linear_bias: Tensor | None = None,
              **kw: Any) -> Tensor:  # fmt: skip
    """The oracle: torch's linear_cross_entropy, or its definition where torch < 2.13."""
    fn = getattr(TF, "linear_cross_entropy", None)
    if fn is not None:
        return fn(x, w, t, linear_bias=linear_bias, **kw)  # type: ignore[no-any-return]
    ignore = kw.pop("ignore_index", None)
    return TF.cross_entropy(
        TF.linear(x, w, linear_bias), t, ignore_index=-100 if ignore is None else ignore, **kw
    )


def _inputs(
    n: int, d: int, v: int, dtype: torch.dtype, seed: int = 0, device: str = "cpu"
) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    data = {
        "x": torch.randn(n, d, generator=g),
        "w": torch.randn(v, d, generator=g),
        "b": torch.randn(v, generator=g),
        "t": torch.randint(0, v, (n,), generator=g),
        "cw": torch.rand(v, generator=g) + 0.1,
        "up": torch.randn(n, generator=g),
    }
    return {k: a.to(device, dtype if a.is_floating_point() else a.dtype) for k, a in data.items()}


def _run(fn: Any, data: dict[str, Tensor], *, bias: bool, **kw: Any) -> list[Tensor]:
    """Loss and the gradients of x, W (and b) for an upstream gradient (per row for 'none')."""
    x = data["x"].clone().requires_grad_()
    w = data["w"].clone().requires_grad_()
    b = data["b"].clone().requires_grad_() if bias else None
    out = fn(x, w, data["t"], linear_bias=b, **kw)
    up = data["up"] if out.dim() else data["up"][0]
    leaves = [x, w] + ([b] if b is not None else [])
    return [out.detach(), *torch.autograd.grad(out, leaves, up.to(out.dtype))]


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Opt in to the interpreted kernel, chunk by the aspect rule alone (small chunks), and
    record each call of the binding: rows, dtype, whether the gradient overwrote the logits."""
    from reimpl.kernels import triton_cross_entropy as tce

    monkeypatch.setenv("REIMPL_TRITON_CPU", "1")
    monkeypatch.setattr(lce, "MIN_CHUNK_LOGITS", 1)
    calls: list[dict[str, Any]] = []
    real = tce.cross_entropy_rows

    def spy(x: Tensor, *args: Any, **kw: Any) -> tuple[Tensor, Tensor | None]:
        loss, grad = real(x, *args, **kw)
        same = grad is not None and grad.data_ptr() == x.data_ptr()
        calls.append({"rows": x.shape[0], "dtype": x.dtype, "in_place": same, "grad": grad})
        return loss, grad

    monkeypatch.setattr(tce, "cross_entropy_rows", spy)
    # the interpreter runs on numpy, which may warn about exp(-inf) arithmetic; a GPU does not
    import numpy as np

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield calls


CASES = list(itertools.product(["mean", "sum", "none"], [0.0, 0.3], [False, True], [None, 2]))


@needs_triton
@interpreted
@pytest.mark.parametrize(("reduction", "smoothing", "weighted", "ignore"), CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_kernel_chunks_match_torch(
    kernel_calls: list[dict[str, Any]],
    reduction: str,
    smoothing: float,
    weighted: bool,
    ignore: Any,
    bias: bool,
) -> None:
    n, d, v = 9, 5, 11
    rows = lce.rows_per_chunk(n, d, v)
    assert rows < n  # really several chunks (the last one short)
    data = _inputs(n, d, v, torch.float32)
    data["t"][3] = 2  # ignore_index=2 always hits a row
    kw = loss_kwargs(data, reduction, smoothing, weighted, ignore)
    ours = _run(F.linear_cross_entropy, data, bias=bias, **kw)
    theirs = _run(torch_lce, data, bias=bias, **kw)
    torch.testing.assert_close(ours, theirs)
    chunks = -(-n // rows)
    # 'none' runs the chunks twice: the losses forward, the gradients in the backward
    assert len(kernel_calls) == (2 if reduction == "none" else 1) * chunks
    assert all(c["dtype"] == torch.float32 for c in kernel_calls)
    assert all(c["in_place"] for c in kernel_calls if c["grad"] is not None)
    assert any(c["grad"] is not None for c in kernel_calls)


@needs_triton
@interpreted
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_through_the_kernel_no_farther_from_float64_than_torch(
    kernel_calls: list[dict[str, Any]], dtype: torch.dtype
) -> None:
    """16-bit logits reach the kernel upcast to float32, as the eager row step takes them;
    hence the criterion of the eager path's 16-bit test: against torch's float64 result on
    the same 16-bit inputs, ours is never farther than torch (plus one 16-bit rounding)."""
    eps = torch.finfo(dtype).eps
    for reduction in ["mean", "sum", "none"]:
        data = _inputs(12, 8, 40, dtype, seed=1)
        kw = {"reduction": reduction, "weight": data["cw"], "label_smoothing": 0.1}
        ours = _run(F.linear_cross_entropy, data, bias=True, **kw)
        theirs = _run(torch_lce, data, bias=True, **kw)
        wide = {k: a.double() if a.is_floating_point() else a for k, a in data.items()}
        exact = _run(torch_lce, wide, bias=True, **{**kw, "weight": wide["cw"]})
        for a, b, e in zip(ours, theirs, exact, strict=True):
            assert a.dtype == b.dtype == dtype
            scale = e.abs().max()
            err_ours = float((a.double() - e).abs().max() / scale)
            err_torch = float((b.double() - e).abs().max() / scale)
            assert err_ours <= err_torch + eps, (reduction, err_ours, err_torch)
    assert kernel_calls and all(c["dtype"] == torch.float32 for c in kernel_calls)


@needs_triton
@interpreted
def test_float64_keeps_the_eager_rows(kernel_calls: list[dict[str, Any]]) -> None:
    """The kernel's arithmetic is float32: float64 stays on the eager row step."""
    data = _inputs(9, 5, 11, torch.float64)
    kw = {"reduction": "none", "label_smoothing": 0.2, "weight": data["cw"]}
    torch.testing.assert_close(
        _run(F.linear_cross_entropy, data, bias=True, **kw),
        _run(torch_lce, data, bias=True, **kw),
    )
    assert kernel_calls == []


@needs_triton
@interpreted
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_second_backward_through_a_retained_graph(
    kernel_calls: list[dict[str, Any]], reduction: str
) -> None:
    """The second backward recomputes the chunks through the kernel (scalar and per-row
    scale) and still matches torch's accumulated gradients."""
    data = _inputs(9, 5, 11, torch.float32)
    ours, theirs = (
        grads_after_two_backwards(fn, data, reduction) for fn in (F.linear_cross_entropy, torch_lce)
    )
    torch.testing.assert_close(ours, theirs)
    assert kernel_calls


# --------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize(("reduction", "smoothing", "weighted", "ignore"), CASES)
def test_cuda_kernel_chunks_match_torch(
    monkeypatch: pytest.MonkeyPatch, reduction: str, smoothing: float, weighted: bool,
    ignore: Any,
) -> None:  # fmt: skip
    from reimpl.kernels import triton_cross_entropy as tce

    calls = []
    real = tce.cross_entropy_rows

    def spy(*args: Any, **kw: Any) -> tuple[Tensor, Tensor | None]:
        calls.append(kw.get("in_place"))
        return real(*args, **kw)

    monkeypatch.setattr(tce, "cross_entropy_rows", spy)
    monkeypatch.setattr(lce, "MIN_CHUNK_LOGITS", 1)
    n, d, v = 300, 64, 5000
    assert lce.rows_per_chunk(n, d, v) < n
    data = _inputs(n, d, v, torch.float32, device="cuda")
    data["t"][::7] = 2
    kw = loss_kwargs(data, reduction, smoothing, weighted, ignore)
    ours = _run(F.linear_cross_entropy, data, bias=True, **kw)
    theirs = _run(torch_lce, data, bias=True, **kw)
    # why: TF32 is off by default, but cuBLAS sums a chunk's rows in another order than one
    # whole-batch product, and the online softmax rounds differently: a few float32 ulp of
    # a sum over 300 rows
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert calls and all(calls)


@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_16_bit_no_farther_from_float64_than_torch(dtype: torch.dtype) -> None:
    eps = torch.finfo(dtype).eps
    for reduction in ["mean", "sum", "none"]:
        data = _inputs(256, 64, 3000, dtype, seed=2, device="cuda")
        kw = {"reduction": reduction, "weight": data["cw"], "label_smoothing": 0.1}
        ours = _run(F.linear_cross_entropy, data, bias=True, **kw)
        theirs = _run(torch_lce, data, bias=True, **kw)
        wide = {k: a.double() if a.is_floating_point() else a for k, a in data.items()}
        exact = _run(torch_lce, wide, bias=True, **{**kw, "weight": wide["cw"]})
        for a, b, e in zip(ours, theirs, exact, strict=True):
            scale = e.abs().max()
            err_ours = float((a.double() - e).abs().max() / scale)
            err_torch = float((b.double() - e).abs().max() / scale)
            assert err_ours <= err_torch + eps, (reduction, err_ours, err_torch)


def _cuda_peak_mib(fn: Any, x: Tensor, w: Tensor, t: Tensor) -> float:
    """Peak allocated memory of a forward + backward beyond what is allocated before."""
    x.grad = w.grad = None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn(x, w, t).backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    x.grad = w.grad = None
    return peak / 2**20


@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_peak_memory_below_torch_unchunked(dtype: torch.dtype) -> None:
    """N=4096, V=32768: the logits alone are 512 MiB in float32; torch's unchunked
    cross_entropy(linear(...)) keeps about three logits-sized tensors. Ours holds the
    gradients of x and W (fp32 accumulation for W) and one chunk buffer."""
    g = torch.Generator(device="cuda").manual_seed(0)
    n, d, v = 4096, 256, 32768
    x = torch.randn(n, d, device="cuda", generator=g, dtype=dtype).requires_grad_()
    w = (torch.randn(v, d, device="cuda", generator=g, dtype=dtype) / 16).requires_grad_()
    t = torch.randint(0, v, (n,), device="cuda", generator=g)
    logits_mib = n * v * x.element_size() / 2**20
    ours = _cuda_peak_mib(F.linear_cross_entropy, x, w, t)
    naive = _cuda_peak_mib(lambda a, b, c: TF.cross_entropy(TF.linear(a, b), c), x, w, t)
    assert naive >= 2 * logits_mib, naive
    assert ours < logits_mib / 2, (ours, naive)
    assert ours < naive / 4, (ours, naive)
