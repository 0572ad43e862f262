"""The Triton layer-norm and RMS-norm kernels against torch's ``F.layer_norm`` /
``F.rms_norm``: on CPU through TRITON_INTERPRET=1 at small sizes (the kernels opted in
with REIMPL_TRITON_CPU=1), compiled for sm_90 without a GPU, and on CUDA (marked ``cuda``)
at transformer sizes.

The interpreter cannot share a process with compiled kernels, so the interpreter tests
skip on a CUDA machine, where the ``cuda`` tests take over.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import pytest
import torch
import torch.nn.functional as TF

import reimpl.nn.functional as F

_HAS_TRITON = importlib.util.find_spec("triton") is not None
interp = pytest.mark.skipif(
    not _HAS_TRITON or torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
    reason="interpreter tests are for CPU-only CI (needs triton and TRITON_INTERPRET=1)",
)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

#: Per dtype (rtol, atol), as the parity rows' (``reimpl_parity.cases.normalization``):
#: float32: the input gradient's three cancelling terms are summed in another order than
#: torch's; 16-bit: the float32 sums can land a result one 16-bit ulp away, and torch's
#: CPU kernels keep a 16-bit layer norm's statistics in 16 bits for backward, where the
#: kernel (as torch's CUDA kernels) keeps them in float32.
_TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}

#: (input shape, normalized_shape): a row of 10 (not a power of two), a row of two
#: dimensions (42), and rows of 1500, longer than the interpreter's block of 1024, so
#: the kernels walk them in blocks and add each program's three rows into the partial
#: buffer
SHAPES = [((3, 5, 10), (10,)), ((4, 6, 7), (6, 7)), ((9, 1500), (1500,))]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Opt the kernels in on CPU and record each time one runs."""
    from reimpl.kernels import triton_norm

    monkeypatch.setenv("REIMPL_TRITON_CPU", "1")
    calls: list[str] = []
    for name in ("forward", "backward"):
        real = getattr(triton_norm, name)

        def wrapped(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kw)

        monkeypatch.setattr(triton_norm, name, wrapped)
    return calls


def _inputs(
    shape: tuple[int, ...],
    norm: tuple[int, ...],
    dtype: torch.dtype,
    device: str,
    *,
    weight: bool,
    bias: bool,
) -> list[Any]:
    """(x, dy, weight or None, bias or None) on ``device`` in ``dtype``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) * 3 + 1
    dy = torch.randn(shape, generator=g)
    w = torch.randn(norm, generator=g) if weight else None
    b = torch.randn(norm, generator=g) if bias else None
    return [t if t is None else t.to(device, dtype) for t in (x, dy, w, b)]


def _grads(fn: Any, x: torch.Tensor, dy: torch.Tensor, *params: torch.Tensor | None) -> list[Any]:
    """(output, dx, d of each given parameter) of ``fn(x, *params)``."""
    leaves = [p if p is None else p.clone().requires_grad_() for p in (x, *params)]
    y = fn(*leaves)
    y.backward(dy)
    return [y.detach()] + [p if p is None else p.grad for p in leaves]


def _check(ours: list[Any], theirs: list[Any], dtype: torch.dtype, names: list[str]) -> None:
    rtol, atol = _TOL[dtype]
    for name, a, b in zip(names, ours, theirs, strict=True):
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == b.dtype, name
        _close(name, a, b, rtol, atol)


def _close(name: str, a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> None:
    def msg(m: str) -> str:
        return f"{name}: {m}"

    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=msg)


def _param_reference(fn: Any, x: Any, dy: Any, *params: Any) -> list[Any]:
    """Parameter gradients from torch in float32 from the same (16-bit) values, rounded
    once to the parameters' dtype: torch's 16-bit CPU layer norm accumulates them row by
    row in 16 bits (its result depends on its thread count), the kernels sum in float32."""
    up = [p if p is None else p.float() for p in params]
    grads = _grads(fn, x.float(), dy.float(), *up)[2:]
    return [g if g is None else g.to(p.dtype) for g, p in zip(grads, params, strict=True)]


@interp
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(("shape", "norm"), SHAPES)
def test_layer_norm_kernels_match_torch(
    spy: list[str],
    dtype: torch.dtype,
    affine: bool,
    shape: tuple[int, ...],
    norm: tuple[int, ...],
) -> None:
    x, dy, w, b = _inputs(shape, norm, dtype, "cpu", weight=affine, bias=affine)

    def ours(x: Any, w: Any, b: Any) -> Any:
        return F.layer_norm(x, norm, w, b, 1e-5)

    def theirs(x: Any, w: Any, b: Any) -> Any:
        return TF.layer_norm(x, norm, w, b, 1e-5)

    got = _grads(ours, x, dy, w, b)
    assert spy == ["forward", "backward"]
    ref = _grads(theirs, x, dy, w, b)
    if dtype != torch.float32 and affine:
        ref[2:] = _param_reference(theirs, x, dy, w, b)
    _check(got, ref, dtype, ["output", "input grad", "weight grad", "bias grad"])


@interp
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(("shape", "norm"), SHAPES)
@pytest.mark.parametrize("eps", [None, 1e-3])
def test_rms_norm_kernels_match_torch(
    spy: list[str],
    dtype: torch.dtype,
    affine: bool,
    shape: tuple[int, ...],
    norm: tuple[int, ...],
    eps: float | None,
) -> None:
    x, dy, w, _ = _inputs(shape, norm, dtype, "cpu", weight=affine, bias=False)

    def ours(x: Any, w: Any) -> Any:
        return F.rms_norm(x, norm, w, eps)

    def theirs(x: Any, w: Any) -> Any:
        return TF.rms_norm(x, norm, w, eps)

    got = _grads(ours, x, dy, w)
    assert spy == ["forward", "backward"]
    ref = _grads(theirs, x, dy, w)
    if dtype != torch.float32 and affine:
        ref[2:] = _param_reference(theirs, x, dy, w)
    _check(got, ref, dtype, ["output", "input grad", "weight grad"])


@interp
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_float32_parameters_beside_16bit_input(spy: list[str], dtype: torch.dtype) -> None:
    """Layer norm's mixed form (16-bit input, float32 weight and bias) runs the kernels
    too: output and input gradient in the input's dtype, parameter gradients float32."""
    x, dy, _, _ = _inputs((6, 40), (40,), dtype, "cpu", weight=False, bias=False)
    _, _, w, b = _inputs((6, 40), (40,), torch.float32, "cpu", weight=True, bias=True)

    def ours(x: Any, w: Any, b: Any) -> Any:
        return F.layer_norm(x, (40,), w, b)

    got = _grads(ours, x, dy, w, b)
    assert spy == ["forward", "backward"]
    ref = _grads(lambda x, w, b: TF.layer_norm(x, (40,), w, b), x, dy, w, b)
    ref[2:] = _param_reference(lambda x, w, b: TF.layer_norm(x, (40,), w, b), x, dy, w, b)
    _check(got[:2], ref[:2], dtype, ["output", "input grad"])
    _check(got[2:], ref[2:], dtype, ["weight grad", "bias grad"])  # (16-bit-rounded inputs)


@interp
def test_modules_take_the_kernels(spy: list[str]) -> None:
    """``reimpl.nn.LayerNorm`` / ``RMSNorm`` reach the kernels through the functional form;
    a float64 input stays on the other paths."""
    import reimpl.nn as rnn

    x = torch.randn(4, 24)
    for cls in ("LayerNorm", "RMSNorm"):
        ours, theirs = getattr(rnn, cls)(24), getattr(torch.nn, cls)(24)
        torch.testing.assert_close(ours(x), theirs(x))
    assert spy == ["forward", "forward"]
    rnn.LayerNorm(24).double()(x.double())
    assert spy == ["forward", "forward"]


@interp
@pytest.mark.parametrize(
    ("row", "dtype"),
    [("layer_norm", torch.float32), *(("rms_norm", dt) for dt in DTYPES)],
    ids=str,
)
def test_parity_rows_through_the_kernels(spy: list[str], row: str, dtype: torch.dtype) -> None:
    """The parity table's drawn calls (shapes, layouts, value regimes, eps, parameters)
    through the kernels. 16-bit layer norm is left to the tests above: torch's CPU kernel
    rounds the statistics to 16 bits before its backward, the kernels (as torch's CUDA
    kernels, which they stand beside) keep float32, so rows of a few values differ from
    CPU torch by a few 16-bit ulps while matching float32 statistics."""
    import dataclasses
    import warnings

    import numpy as np

    from reimpl_parity.cases.normalization import NORMALIZATION_CASES
    from reimpl_parity.harness import check_case

    case = next(c for c in NORMALIZATION_CASES if c.name == row)

    def quiet(*args: Any, **kwargs: Any) -> Any:
        # the interpreter runs on numpy, which warns about inf - inf; a GPU does not
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return case.ours(*args, **kwargs)

    with np.errstate(all="ignore"):  # (the backward runs outside ``quiet``)
        check_case(dataclasses.replace(case, ours=quiet), dtype, "cpu", max_examples=15)
    assert "forward" in spy and "backward" in spy


# (compiled for sm_90: every launch of these kernels, in test_triton_aot)

# ------------------------------------------------------------------------------- on CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize(("shape", "norm"), [((4096, 1000), (1000,)), ((8, 40000), (40000,))])
def test_cuda_kernels_match_torch(
    spy: list[str], dtype: torch.dtype, rms: bool, shape: tuple[int, ...], norm: tuple[int, ...]
) -> None:
    """Compiled, at a transformer's row size and at a row longer than one block, against
    torch's CUDA kernels (which also keep float32 statistics)."""
    x, dy, w, b = _inputs(shape, norm, dtype, "cuda", weight=True, bias=not rms)
    if rms:
        got = _grads(lambda x, w: F.rms_norm(x, norm, w), x, dy, w)
        ref = _grads(lambda x, w: TF.rms_norm(x, norm, w), x, dy, w)
        ref[2:] = _param_reference(lambda x, w: TF.rms_norm(x, norm, w), x, dy, w)
    else:
        got = _grads(lambda x, w, b: F.layer_norm(x, norm, w, b), x, dy, w, b)
        ref = _grads(lambda x, w, b: TF.layer_norm(x, norm, w, b), x, dy, w, b)
        ref[2:] = _param_reference(lambda x, w, b: TF.layer_norm(x, norm, w, b), x, dy, w, b)
    assert spy == ["forward", "backward"]
    names = ["output", "input grad", "weight grad", "bias grad"][: len(got)]
    # (parameter gradients: sums over 4096 rows in another order; float32 relative 1e-4)
    _check(got[:2], ref[:2], dtype, names[:2])
    for name, a, r in zip(names[2:], got[2:], ref[2:], strict=True):
        rtol, atol = (1e-4, 1e-4) if dtype == torch.float32 else _TOL[dtype]
        _close(name, a, r, rtol, atol)
