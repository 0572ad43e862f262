"""Instance norm, local response norm and the lazy norms beyond the parity table: every
dtype combination torch's CPU instance norm takes or refuses, double backward,
``torch.compile``, the lazy-module protocol (class swap, uninitialized state_dict,
DataParallel refusal), and the differences from torch, each shown with torch's behaviour
(torch raises where reimpl computes the result torch gives for an equivalent input)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
import torch.nn.functional as TF

import reimpl.nn as RN
import reimpl.nn.functional as F

g = torch.Generator().manual_seed(0)
X4 = torch.randn(3, 4, 5, 6, generator=g)
X3 = torch.randn(2, 4, 5, generator=g)
C4 = torch.rand(4, generator=g) + 0.5

_DTYPES = {
    "f64": torch.float64,
    "f32": torch.float32,
    "f16": torch.float16,
    "bf16": torch.bfloat16,
    "-": None,
}
#: per input dtype: (rtol, atol) of the outputs and statistics (16-bit: torch's kernel keeps
#: the statistics in 16 bits when the parameters are, and rounds in its own order)
_TOL = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-2, 5e-3),
    torch.bfloat16: (5e-2, 5e-2),
}


def _run(fn: Any, x: torch.Tensor, specs: list[str], use_input_stats: bool) -> Any:
    def make(key: str, base: float, i: int) -> torch.Tensor | None:
        dt = _DTYPES[key]
        if dt is None:
            return None
        return (torch.linspace(0.5, 1.5, x.size(1), dtype=torch.float64) * base + i).to(dt)

    rm, rv, w, b = (
        make(k, v, i) for i, (k, v) in enumerate(zip(specs, (0.3, 1.2, 1.0, 0.2), strict=True))
    )
    try:
        out = fn(x, rm, rv, w, b, use_input_stats=use_input_stats, momentum=0.3)
    except Exception as e:  # compared with torch's below
        return type(e)
    return out, rm, rv


@pytest.mark.parametrize("input_dtype", ["f64", "f32", "f16", "bf16"])
def test_every_dtype_combination_as_torch(input_dtype: str) -> None:
    """Running mean, running var, weight, bias: each absent or of any float dtype, with and
    without input statistics: reimpl refuses exactly what torch's CPU kernel refuses, with
    its exception type, and computes what torch computes."""
    x = X3.to(_DTYPES[input_dtype])
    rtol, atol = _TOL[x.dtype]
    for *specs, use_stats in itertools.product(*[list(_DTYPES)] * 4, [True, False]):
        if not use_stats and "-" in specs[:2]:
            continue  # refused before any dtype is looked at (an error row of the table)
        ours, theirs = (_run(fn, x, specs, use_stats) for fn in (F.instance_norm, TF.instance_norm))
        where = f"input {input_dtype}, (rm, rv, w, b) {specs}, use_input_stats={use_stats}"
        if isinstance(theirs, type) or isinstance(ours, type):
            assert ours == theirs, f"{where}: reimpl {ours}, torch {theirs}"
            continue
        torch.testing.assert_close(
            ours, theirs, rtol=rtol, atol=atol, msg=lambda m, where=where: f"{where}: {m}"
        )


@pytest.mark.parametrize("use_input_stats", [True, False])
def test_double_backward_float64_as_torch(use_input_stats: bool) -> None:
    """Second derivatives (input, weight, bias) equal torch's."""
    results = []
    for fn in (F.instance_norm, TF.instance_norm):
        x = X4.double().requires_grad_()
        w, b = C4.double().requires_grad_(), (C4.double() - 1).requires_grad_()
        rm, rv = C4.double() - 0.5, C4.double() + 0.25
        out = fn(x, rm, rv, w, b, use_input_stats=use_input_stats)
        up = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)
        first = torch.autograd.grad(out, (x, w, b), up, create_graph=True)
        total = sum((f * f).sum() for f in first)
        second = torch.autograd.grad(total, (x, w, b), allow_unused=True, materialize_grads=True)
        results.append((first, second))
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", [True, False])
def test_without_running_stats_the_kernel_path_matches_torch(
    dtype: torch.dtype, affine: bool
) -> None:
    """No running statistics (InstanceNorm's default): the C group-norm kernels with a group
    per channel compute it; output, gradients and second derivatives equal torch's, also for
    a channels-last input (whose output is contiguous, as torch's)."""
    results = []
    for fn in (F.instance_norm, TF.instance_norm):
        x = X4.to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
        w = C4.to(dtype).requires_grad_() if affine else None
        b = (C4.to(dtype) - 1).requires_grad_() if affine else None
        out = fn(x, None, None, w, b)
        if fn is F.instance_norm:  # (after the channels-last input's copy)
            assert "NormalizeBackward" in str(out.grad_fn) + str(out.grad_fn.next_functions)
        assert out.is_contiguous()
        leaves = [t for t in (x, w, b) if t is not None]
        up = torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)
        first = torch.autograd.grad(out, leaves, up, create_graph=True)
        total = sum((f * f).sum() for f in first)
        second = torch.autograd.grad(total, leaves, allow_unused=True, materialize_grads=True)
        results.append((out, first, second))
    torch.testing.assert_close(results[0], results[1])


def test_local_response_norm_double_backward_float64_as_torch() -> None:
    results = []
    for fn in (F.local_response_norm, TF.local_response_norm):
        x = X4.double().requires_grad_()
        out = fn(x, 3, alpha=0.5, beta=0.75, k=1.5)
        (first,) = torch.autograd.grad(out, x, torch.cos(out.detach()), create_graph=True)
        (second,) = torch.autograd.grad((first * first).sum(), x)
        results.append((first, second))
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("instance_norm", lambda F, x: F.instance_norm(x, None, None, C4, C4 - 1)),
        ("local_response_norm", lambda F, x: F.local_response_norm(x, 3, alpha=0.5)),
    ],
)
def test_compile_fullgraph(name: str, call: Any) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: call(F, x), fullgraph=True, backend="aot_eager")
    x1, x2 = X4.clone().requires_grad_(), X4.clone().requires_grad_()
    eager, traced = call(TF, x1), compiled(x2)
    torch.testing.assert_close(traced, eager)
    eager.pow(2).sum().backward()
    traced.pow(2).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)


def test_local_response_norm_integer_input_as_torch() -> None:
    """Integer squares are averaged as integers (truncated), then the result is float."""
    for shape in ((2, 5, 3), (2, 5, 3, 2)):
        x = torch.randint(-40, 40, shape, generator=g)
        ours, theirs = (
            F.local_response_norm(x, 3, alpha=0.7),
            TF.local_response_norm(x, 3, alpha=0.7),
        )
        assert ours.dtype == theirs.dtype
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


# ------------------------------------------------------------- differences from torch


def test_difference_lrn_transposed_5d_input() -> None:
    """torch views its 5-D-and-up squares as (N, 1, C, D, -1), which a transposed input's
    squares cannot be viewed as, and raises; reimpl computes, as torch does on a copy."""
    x = torch.randn(2, 3, 4, 2, 3, generator=g).transpose(3, 4)
    with pytest.raises(RuntimeError):
        TF.local_response_norm(x, 2)
    torch.testing.assert_close(
        F.local_response_norm(x, 2), TF.local_response_norm(x.contiguous(), 2), rtol=0, atol=0
    )


def test_difference_instance_norm_empty_batch_with_affine() -> None:
    """torch's CPU kernel reads weight[0] of the (empty) repeated weight of an empty batch
    and raises; reimpl returns the empty output, as torch does without weight."""
    x = torch.randn(0, 3, 4)
    with pytest.raises(IndexError):
        TF.instance_norm(x, weight=torch.ones(3))
    out = F.instance_norm(x, weight=torch.ones(3))
    assert out.shape == x.shape and out.dtype == x.dtype


# --------------------------------------------------------------------------- lazy norms

_LAZY = [
    ("LazyBatchNorm1d", (4, 3)),
    ("LazyBatchNorm2d", (2, 3, 4, 4)),
    ("LazyBatchNorm3d", (2, 3, 2, 2, 2)),
    ("LazyInstanceNorm1d", (2, 3, 5)),
    ("LazyInstanceNorm2d", (2, 3, 4, 4)),
    ("LazyInstanceNorm3d", (2, 3, 2, 2, 2)),
]


@pytest.mark.parametrize(("cls", "shape"), _LAZY, ids=[c for c, _ in _LAZY])
def test_lazy_module_becomes_the_reimpl_module(cls: str, shape: tuple[int, ...]) -> None:
    m, t = getattr(RN, cls)(), getattr(torch.nn, cls)()
    assert isinstance(m, getattr(torch.nn, cls))
    assert not isinstance(m, getattr(torch.nn, cls[4:]))  # not materialized: as torch's
    assert m.has_uninitialized_params()
    x = torch.randn(shape, generator=g)
    torch.testing.assert_close(m(x), t(x))
    assert type(m) is getattr(RN, cls[4:]) and type(t) is getattr(torch.nn, cls[4:])
    assert not hasattr(m, "_initialize_hook") and not m._forward_pre_hooks
    torch.testing.assert_close(m.state_dict(), t.state_dict())


def test_lazy_module_refuses_data_parallel_replication_as_torch() -> None:
    for ns in (RN, torch.nn):
        with pytest.raises(RuntimeError):
            ns.LazyBatchNorm2d()._replicate_for_data_parallel()


def test_lazy_instance_norm_reads_dim_1_of_an_unbatched_input_as_torch() -> None:
    """torch infers num_features from dim 1 even of an unbatched input (there, a spatial
    dim), so the affine module then refuses the input; reimpl's does the same."""
    x = torch.randn(3, 4, 5, generator=g)
    for ns in (RN, torch.nn):
        m = ns.LazyInstanceNorm2d()
        with pytest.raises(ValueError):
            m(x)
        assert m.num_features == 4


def test_lazy_module_loads_an_initialized_state_dict_as_torch() -> None:
    src = torch.nn.BatchNorm2d(3)
    src.train()(torch.randn(4, 3, 2, 2, generator=g))
    for ns in (RN, torch.nn):
        m = ns.LazyBatchNorm2d()
        m.load_state_dict(src.state_dict())
        assert type(m).__name__ == "LazyBatchNorm2d"  # materialized by the first forward
        assert not m.has_uninitialized_params()
        torch.testing.assert_close(m.state_dict(), src.state_dict())
