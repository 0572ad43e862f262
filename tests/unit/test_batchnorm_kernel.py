"""The batch norm C kernels and their autograd Function against torch: forward, backward
and running statistics in float32/float64, NCHW and channels_last, with and without the
affine parameters, for 1-d, 2-d and 3-d inputs; a large channel mean (where a sum of
squares would cancel); the saved tensors; double backward; and the operand gate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import gradcheck, gradgradcheck

import reimpl.nn.functional as F
from reimpl.kernels import cpu_batch_norm
from reimpl.kernels.cpu_batch_norm import Layout

pytestmark = pytest.mark.skipif(
    cpu_batch_norm._functions() is None, reason="no C compiler: the kernels are not built"
)

_CL = {4: torch.channels_last, 5: torch.channels_last_3d}
_SHAPES = {
    "1d (N, C)": ((32, 6), None),
    "1d (N, C, L)": ((8, 5, 7), None),
    "2d": ((6, 8, 5, 5), None),
    "2d channels_last": ((6, 8, 5, 5), torch.channels_last),
    "3d": ((4, 5, 3, 3, 3), None),
    "3d channels_last": ((4, 5, 3, 3, 3), torch.channels_last_3d),
    # from 32768 elements the kernels split the work over threads
    "1d (N, C), threaded": ((4096, 12), None),
    "2d, threaded": ((16, 8, 16, 17), None),
    "2d channels_last, threaded": ((16, 8, 16, 17), torch.channels_last),
}


#: the rows layouts where torch's kernel keeps float32 sums per thread over many rows
_FLOAT32_ROW_SUMS = ("1d (N, C), threaded", "2d channels_last, threaded")


def _run(
    fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    params: tuple[torch.Tensor | None, ...],
    stats: tuple[torch.Tensor | None, torch.Tensor | None],
    dy: torch.Tensor,
    **kw: Any,
) -> tuple[Any, ...]:
    """Output, its memory format, gradients of x and the given parameters, and the
    running statistics afterwards, on fresh copies."""
    xi = x.detach().clone().requires_grad_()
    ps = [None if p is None else p.detach().clone().requires_grad_() for p in params]
    rm, rv = (None if s is None else s.clone() for s in stats)
    out = fn(xi, rm, rv, *ps, **kw)
    out.backward(dy)
    grads = [xi.grad, *(p.grad for p in ps if p is not None)]
    fmt = _CL.get(x.dim())
    return out, out.is_contiguous(memory_format=fmt) if fmt else True, grads, rm, rv


def _inputs(
    shape: tuple[int, ...], fmt: torch.memory_format | None, dtype: torch.dtype, shift: float = 0
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(sum(shape))
    c = shape[1]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) + shift).to(dtype)
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    if fmt is not None:
        x, dy = x.contiguous(memory_format=fmt), dy.contiguous(memory_format=fmt)
    w, b, rm = (torch.randn(c, generator=g, dtype=dtype) for _ in range(3))
    rv = torch.rand(c, generator=g, dtype=dtype) + 0.5
    return x, dy, w, b, rm, rv


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", list(_SHAPES))
def test_kernel_matches_torch(case: str, training: bool, affine: str, dtype: torch.dtype) -> None:
    shape, fmt = _SHAPES[case]
    x, dy, w, b, rm, rv = _inputs(shape, fmt, dtype)
    params = {"both": (w, b), "weight": (w, None), "none": (None, None)}[affine]
    kw: dict[str, Any] = {"training": training, "momentum": 0.3, "eps": 1e-3}
    out = F.batch_norm(x.requires_grad_(), rm.clone(), rv.clone(), *params, **kw)
    assert type(out.grad_fn).__name__ == "BatchNormFunctionBackward"
    ours = _run(F.batch_norm, x, params, (rm, rv), dy, **kw)
    if dtype == torch.float32 and case in _FLOAT32_ROW_SUMS:
        # torch sums these per thread in float32, over thousands of rows: its weight
        # gradient is off by ~1e-4 relative, past float32's tolerance (ours, summed in
        # double, by ~1e-6); so the oracle is torch in float64, rounded to float32
        wide = tuple(None if p is None else p.double() for p in params)
        theirs = _run(
            TF.batch_norm, x.double(), wide, (rm.double(), rv.double()), dy.double(), **kw
        )
        out, fmt_kept, grads, *stats = theirs
        theirs = (out.float(), fmt_kept, [g.float() for g in grads], *(t.float() for t in stats))
    else:
        theirs = _run(TF.batch_norm, x, params, (rm, rv), dy, **kw)
    torch.testing.assert_close(ours, theirs)


def test_strided_input_and_expanded_gradient_match_torch() -> None:
    """A transposed input (read through a contiguous copy) and the stride-0 upstream
    gradient of ``out.sum()``."""
    x, _, w, b, rm, rv = _inputs((7, 6, 9), None, torch.float32)
    results = []
    for fn in (F.batch_norm, TF.batch_norm):
        xi = x.transpose(0, 2).detach().clone().requires_grad_()  # (9, 6, 7), strided view
        xs = xi.transpose(0, 2).transpose(0, 2)
        wi = w.clone().requires_grad_()
        out = fn(xs, rm.clone(), rv.clone(), wi, b, training=True)
        out.sum().backward()
        results.append((out, xi.grad, wi.grad))
    torch.testing.assert_close(results[0], results[1])


def test_large_channel_mean_nchw_matches_torch_exactly() -> None:
    """x = 1e4 + randn: the output x·alpha + beta cancels to ~1e-3 absolute in float32,
    so it agrees with torch's only if mean and invstd are torch's to the bit (they are:
    the same sums in double, the same roundings); so do the running statistics. The
    gradients, from sums in another order, agree to float32's tolerance."""
    x, dy, w, b, rm, rv = _inputs((16, 4, 32, 32), None, torch.float32, shift=1e4)
    kw = {"training": True, "momentum": 1.0}
    out, _, grads, *stats = _run(F.batch_norm, x, (w, b), (rm, rv), dy, **kw)
    out_t, _, grads_t, *stats_t = _run(TF.batch_norm, x, (w, b), (rm, rv), dy, **kw)
    torch.testing.assert_close((out, stats), (out_t, stats_t), rtol=0, atol=0)
    torch.testing.assert_close(grads, grads_t)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_large_channel_mean_statistics_match_float64_torch(fmt: torch.memory_format) -> None:
    """The statistics of x = 1e4 + randn (momentum 1: running_mean is the batch mean,
    running_var its unbiased variance) against torch in float64, at float32's tolerance.
    channels_last reads rows with one-pass sums shifted by the first row: no cancellation.
    (torch's own float32 channels_last kernel sums in float32 and is off by ~1e-2 here.)"""
    x, _, _, _, rm, rv = _inputs((16, 4, 32, 32), None, torch.float32, shift=1e4)
    x = x.contiguous(memory_format=fmt)
    ours = (rm.clone(), rv.clone())
    F.batch_norm(x, *ours, training=True, momentum=1.0)
    theirs = (rm.double(), rv.double())
    TF.batch_norm(x.double(), *theirs, training=True, momentum=1.0)
    torch.testing.assert_close(ours, tuple(t.float() for t in theirs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fmt", [None, torch.channels_last])
def test_eval_forward_matches_torch_exactly(
    fmt: torch.memory_format | None, dtype: torch.dtype
) -> None:
    x, _, w, b, rm, rv = _inputs((6, 8, 5, 5), fmt, dtype)
    with torch.no_grad():
        ours = F.batch_norm(x, rm, rv, w, b, training=False, eps=1e-3)
        theirs = TF.batch_norm(x, rm, rv, w, b, training=False, eps=1e-3)
    assert ours.stride() == theirs.stride()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def _saved_bytes(fn: Callable[..., torch.Tensor], *args: Any, **kw: Any) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.nbytes
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args, **kw)
    return total


@pytest.mark.parametrize("tracked", [True, False])
def test_saves_no_more_than_torch(tracked: bool) -> None:
    """What backward keeps (the peak memory a training step adds): the input, the weight,
    one mean and one invstd per channel; torch keeps at least that."""
    x, _, w, b, rm, rv = _inputs((6, 8, 5, 5), None, torch.float32)
    x.requires_grad_()
    w.requires_grad_()
    stats = (rm, rv) if tracked else (None, None)
    ours = _saved_bytes(F.batch_norm, x, *stats, w, b, training=True)
    theirs = _saved_bytes(TF.batch_norm, x, *stats, w, b, training=True)
    assert ours == x.nbytes + w.nbytes + 2 * 8 * 4
    assert ours <= theirs


@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_and_gradgradcheck_float64(training: bool) -> None:
    """Double backward differentiates the composite form."""
    x, _, w, b, rm, rv = _inputs((3, 4, 5), None, torch.float64)
    x, w, b = (t.requires_grad_() for t in (x, w, b))

    def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, rm.clone(), rv.clone(), w, b, training=training)

    assert type(fn(x, w, b).grad_fn).__name__ == "BatchNormFunctionBackward"
    assert gradcheck(fn, (x, w, b))
    assert gradgradcheck(fn, (x, w, b))


def test_second_derivative_matches_torch() -> None:
    x, dy, w, b, *_ = _inputs((4, 3, 6), None, torch.float64)
    results = []
    for fn in (F.batch_norm, TF.batch_norm):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = fn(xi, None, None, wi, b, training=True)
        (gx,) = torch.autograd.grad(out, xi, dy, create_graph=True)
        results.append(torch.autograd.grad((gx * gx).sum(), (xi, wi)))
    torch.testing.assert_close(results[0], results[1])


# ------------------------------------------------------------------------ the operand gate

_AT = Layout(2, 3, 4, False, torch.contiguous_format)


def _never_called(*_: Any) -> int:
    raise AssertionError("a malformed operand reached the C kernel")


@pytest.fixture
def no_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels that fail the test if called: the gate must refuse before them."""
    stubs = {f"{w}_{d}": _never_called for w in ("fwd", "bwd") for d in ("f32", "f64")}
    monkeypatch.setattr(cpu_batch_norm, "_functions", lambda: stubs)


def _operands() -> dict[str, torch.Tensor]:
    return {"x": torch.randn(2, 3, 4), "w": torch.randn(3), "b": torch.randn(3)}


@pytest.mark.usefixtures("no_c")
@pytest.mark.parametrize(
    ("break_it", "match"),
    [
        (lambda t: {**t, "x": t["x"].transpose(0, 2).contiguous().transpose(0, 2)}, "dense"),
        (lambda t: {**t, "x": torch.randn(2, 3, 5)}, "elements"),
        (lambda t: {**t, "w": torch.randn(4)}, "elements"),
        (lambda t: {**t, "w": t["w"].double()}, "float32"),
        (lambda t: {**t, "b": torch.randn(2)}, "elements"),
        (lambda t: {**t, "w": torch.randn(6)[::2]}, "dense"),
    ],
    ids=[
        "non-contiguous input",
        "input size",
        "weight size",
        "weight dtype",
        "bias size",
        "strided",
    ],
)
def test_gate_refuses_malformed_operands_before_the_kernel(
    break_it: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]], match: str
) -> None:
    t = break_it(_operands())
    with pytest.raises(RuntimeError, match=match):
        cpu_batch_norm.forward(t["x"], t["w"], t["b"], None, None, _AT, True, 1e-5)


@pytest.mark.usefixtures("no_c")
def test_gate_refuses_an_output_overlapping_an_input() -> None:
    x = torch.randn(2, 3, 4)
    with pytest.raises(RuntimeError, match="shares memory"):
        cpu_batch_norm._checked(
            "test", torch.float32, _AT, {"input": (x, 24)}, {"output": (x[1, 0], 4)}
        )


@pytest.mark.usefixtures("no_c")
def test_gate_refuses_short_statistics_and_bad_gradients() -> None:
    t = _operands()
    mean, invstd = torch.zeros(3), torch.ones(3)
    need = (True, True, True)
    with pytest.raises(RuntimeError, match="elements"):
        cpu_batch_norm.backward(t["x"], t["x"], t["w"], mean[:2], invstd, _AT, True, need)
    dy = torch.randn(4, 3, 2).transpose(0, 2)
    with pytest.raises(RuntimeError, match="dense"):
        cpu_batch_norm.backward(t["x"], dy, t["w"], mean, invstd, _AT, True, need)
    with pytest.raises(RuntimeError, match="running_mean"):
        cpu_batch_norm.forward(t["x"], None, None, None, None, _AT, False, 1e-5)


@pytest.mark.parametrize("affine", ["both", "weight", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(_SHAPES))
def test_eval_without_grad_takes_the_one_call_path(
    case: str, dtype: torch.dtype, affine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evaluation with nothing to differentiate: ``cpu_batch_norm.eval_forward`` alone (the
    general binding is never reached), torch's result to the bit, in torch's layout."""
    shape, fmt = _SHAPES[case]
    x, _, w, b, rm, rv = _inputs(shape, fmt, dtype)
    params = {"both": (w, b), "weight": (w, None), "none": (None, None)}[affine]
    with torch.no_grad():
        theirs = TF.batch_norm(x, rm, rv, *params, training=False, eps=1e-3)
        monkeypatch.setattr(cpu_batch_norm, "forward", _never_called)
        ours = F.batch_norm(x, rm, rv, *params, training=False, eps=1e-3)
    assert ours.stride() == theirs.stride()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_eval_one_call_path_declines_what_it_cannot_read() -> None:
    """A strided input, or a weight of another layout: the general path, same result."""
    x, _, w, b, rm, rv = _inputs((6, 8, 5, 5), None, torch.float32)
    cases = [(x.transpose(2, 3), w), (x, torch.randn(16)[::2])]
    with torch.no_grad():
        for xi, wi in cases:
            assert cpu_batch_norm.eval_forward(xi, rm, rv, wi, b, 1e-5) is None
            ours = F.batch_norm(xi, rm, rv, wi, b, training=False)
            torch.testing.assert_close(ours, TF.batch_norm(xi, rm, rv, wi, b, training=False))


@pytest.mark.usefixtures("no_c")
@pytest.mark.parametrize("which", ["input", "running_var", "bias"])
def test_eval_one_call_path_refuses_a_storage_too_small(which: str) -> None:
    x, _, w, b, rm, rv = _inputs((4, 3, 2, 2), None, torch.float32)
    t = {"input": x, "running_var": rv, "bias": b}[which]
    t.untyped_storage().resize_(t.nbytes - 4)  # (as FSDP frees a parameter's storage)
    with torch.no_grad(), pytest.raises(RuntimeError, match=f"{which} has a storage smaller"):
        F.batch_norm(x, rm, rv, w, b, training=False)
