"""The one-pass C kernels of binary_cross_entropy_with_logits (``reimpl.kernels.cpu_bce``)
against torch: float32/float64, every reduction, each ``weight`` / ``pos_weight`` layout the
kernels take (a number, one per class -- tiled when short --, a trailing block, the input's
shape; two with different periods, so runs end at either's wrap) and some they leave to
torch ops, extreme logits (±100, ±inf, nan), soft targets, a target that
needs a gradient, double backward, the fallback without the library, and the operand gate
every pointer passes before it reaches C."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import gradcheck, gradgradcheck

import reimpl.nn.functional as F
from reimpl.kernels import cpu_bce, guard

KERNEL = "_BinaryCrossEntropyWithLogitsKernelBackward"
needs_kernels = pytest.mark.skipif(
    cpu_bce._functions() is None, reason="no C compiler: the kernels are not built"
)

# 260 x 257 = 66820 elements: more than one thread's share, and a class count that is
# neither a power of two nor a multiple of the vector width (the runs end mid-vector)
SHAPE = (260, 257)
EXTREMES = [100.0, -100.0, float("inf"), float("-inf"), float("nan"), 0.0, 30.0, -30.0]


def _extra(kind: str | None, shape: tuple[int, ...], dtype: torch.dtype, g: Any) -> Any:
    if kind is None:
        return None
    shapes = {"number": (), "class": shape[-1:], "row class": (1, shape[-1]), "full": shape}
    return torch.rand(shapes[kind], generator=g, dtype=dtype) * 3


def _inputs(
    shape: tuple[int, ...], dtype: torch.dtype, extremes: bool, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 6
    t = torch.rand(shape, generator=g, dtype=dtype)  # soft targets in [0, 1]
    t.view(-1)[:4] = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=dtype)
    if extremes:
        x.view(-1)[: len(EXTREMES)] = torch.tensor(EXTREMES, dtype=dtype)
        x.view(-1)[-len(EXTREMES) :] = torch.tensor(EXTREMES, dtype=dtype)
    return x, t, g


def _both(
    x: torch.Tensor,
    t: torch.Tensor,
    need: tuple[bool, bool] = (True, True),
    upstream: Callable[[torch.Tensor], torch.Tensor] | None = None,
    **kw: Any,
) -> list[tuple[Any, ...]]:
    """(loss, input grad, target grad, grad_fn name) from reimpl and from torch."""
    results = []
    for fn in (F.binary_cross_entropy_with_logits, TF.binary_cross_entropy_with_logits):
        xi = x.clone().requires_grad_(need[0])
        ti = t.clone().requires_grad_(need[1])
        out = fn(xi, ti, **kw)
        up = upstream(out) if upstream is not None else torch.ones_like(out)
        out.backward(up)
        results.append((out.detach(), xi.grad, ti.grad, type(out.grad_fn).__name__))
    return results


def _close(ours: tuple[Any, ...], theirs: tuple[Any, ...]) -> None:
    torch.testing.assert_close(ours[:3], theirs[:3], equal_nan=True)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight", [None, "number", "full", "class"])
@pytest.mark.parametrize("pos_weight", [None, "number", "class", "row class", "full"])
def test_kernel_matches_torch(
    dtype: torch.dtype, reduction: str, weight: str | None, pos_weight: str | None
) -> None:
    x, t, g = _inputs(SHAPE, dtype, extremes=reduction == "none")
    kw = {
        "weight": _extra(weight, SHAPE, dtype, g),
        "pos_weight": _extra(pos_weight, SHAPE, dtype, g),
        "reduction": reduction,
    }
    up = torch.rand(SHAPE, generator=g, dtype=dtype) if reduction == "none" else None
    ours, theirs = _both(x, t, upstream=None if up is None else (lambda _: up), **kw)
    assert ours[3] == KERNEL
    _close(ours, theirs)


@needs_kernels
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("pos_weight", [None, "class"])
def test_extreme_logits_in_a_reduced_loss(reduction: str, pos_weight: str | None) -> None:
    """Saturated logits (±100, ±30) but no inf/nan: the sum stays finite and matches."""
    x, t, g = _inputs(SHAPE, torch.float32, extremes=False)
    x.view(-1)[:4] = torch.tensor([100.0, -100.0, 30.0, -30.0])
    kw = {"pos_weight": _extra(pos_weight, SHAPE, torch.float32, g), "reduction": reduction}
    ours, theirs = _both(x, t, **kw)
    assert ours[3] == KERNEL and torch.isfinite(ours[0]).all()
    _close(ours, theirs)


@needs_kernels
@pytest.mark.parametrize("need", [(True, False), (False, True)], ids=["input", "target"])
@pytest.mark.parametrize("pos_weight", [None, "class"])
def test_one_gradient_asked_for(need: tuple[bool, bool], pos_weight: str | None) -> None:
    x, t, g = _inputs((5, 7), torch.float32, extremes=False)
    kw = {"pos_weight": _extra(pos_weight, (5, 7), torch.float32, g)}
    ours, theirs = _both(x, t, need, **kw)
    assert ours[3] == KERNEL
    _close(ours, theirs)


@needs_kernels
def test_long_class_period_and_upstream_view() -> None:
    """A per-class pos_weight long enough not to be tiled (the runs restart at each row),
    a 3-d input, and a stride-0 upstream gradient (``loss.sum()`` of the unreduced loss)."""
    shape = (3, 40, 1100)
    x, t, g = _inputs(shape, torch.float32, extremes=True, seed=1)
    kw = {
        "pos_weight": _extra("class", shape, torch.float32, g),
        "weight": _extra("full", shape, torch.float32, g)[0],  # broadcast over dim 0
        "reduction": "none",
    }
    ours, theirs = _both(x, t, upstream=lambda o: torch.ones(()).expand_as(o), **kw)
    assert ours[3] == KERNEL
    _close(ours, theirs)


@needs_kernels
def test_mean_is_deterministic() -> None:
    x, t, _ = _inputs((1024, 513), torch.float32, extremes=False)
    first = F.binary_cross_entropy_with_logits(x, t)
    assert all(torch.equal(first, F.binary_cross_entropy_with_logits(x, t)) for _ in range(5))


_DECLINED: dict[str, Callable[[torch.Tensor, torch.Tensor], tuple[Any, ...]]] = {
    "column weight": lambda x, t: (x, t, {"weight": torch.rand(x.shape[0], 1)}),
    "column pos_weight": lambda x, t: (x, t, {"pos_weight": torch.rand(x.shape[0], 1)}),
    "float64 pos_weight": lambda x, t: (x, t, {"pos_weight": torch.rand(x.shape[-1]).double()}),
    "strided input": lambda x, t: (x.t().contiguous().t(), t, {}),
    "bfloat16": lambda x, t: (x.bfloat16(), t.bfloat16(), {}),
    "strided weight": lambda x, t: (x, t, {"weight": torch.rand(x.shape[::-1]).t()}),
}


@pytest.mark.parametrize("case", list(_DECLINED))
def test_layouts_the_kernel_leaves_to_torch_ops(case: str) -> None:
    x, t, kw = _DECLINED[case](*_inputs((6, 9), torch.float32, extremes=False)[:2])
    assert cpu_bce.prepare(x, t, kw.get("weight"), kw.get("pos_weight")) is None
    ours, theirs = _both(x, t, **kw)
    assert ours[3] != KERNEL
    tol = {"rtol": 1.6e-2, "atol": 1e-5} if x.dtype == torch.bfloat16 else {}
    torch.testing.assert_close(ours[:3], theirs[:3], **tol)  # type: ignore[arg-type]


def test_torch_ops_fallback_without_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_bce, "_functions", lambda: None)
    x, t, g = _inputs((6, 9), torch.float32, extremes=True)
    ours, theirs = _both(x, t, pos_weight=_extra("class", (6, 9), torch.float32, g))
    assert ours[3] != KERNEL
    _close(ours, theirs)


@needs_kernels
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_double_backward_through_the_kernel_function(reduction: str) -> None:
    """create_graph=True: the backward computes with torch ops autograd can follow."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.rand(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w, p = torch.rand(5, dtype=torch.float64, generator=g), torch.rand((), dtype=torch.float64)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(x, t, w, reduction=reduction, pos_weight=p)

    assert type(fn(x, t).grad_fn).__name__ == KERNEL
    assert gradcheck(fn, (x, t))
    assert gradgradcheck(fn, (x, t))
    hessians = []
    for f in (F.binary_cross_entropy_with_logits, TF.binary_cross_entropy_with_logits):
        loss = f(x, t, w, reduction=reduction, pos_weight=p).sum()
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        hessians.append(torch.autograd.grad(gx.sum(), (x, t)))
    torch.testing.assert_close(hessians[0], hessians[1])


# ------------------------------------------------------------------------ the operand gate


def _periodic(x: torch.Tensor, **kw: Any) -> cpu_bce.Periodic:
    base = {"w": None, "w_period": 0, "p": None, "p_period": 0}
    return cpu_bce.Periodic(**{**base, **kw})


_MALFORMED: dict[str, tuple[Callable[[torch.Tensor], tuple[Any, ...]], str]] = {
    "weight shorter than its period": (
        lambda x: (x, x.clone(), _periodic(x, w=torch.rand(3), w_period=5)),
        "elements",
    ),
    "pos_weight of another dtype": (
        lambda x: (x, x.clone(), _periodic(x, p=torch.rand(4).double(), p_period=4)),
        "float32",
    ),
    "strided input": (lambda x: (x.t(), x.clone(), _periodic(x)), "contiguous"),
    "target of another size": (lambda x: (x, x.view(-1)[:8].clone(), _periodic(x)), "elements"),
    "pos_weight past its storage": (
        lambda x: (x, x.clone(), _periodic(x, p=_shrunk(torch.rand(8)), p_period=8)),
        "storage",
    ),
    "subclass input": (lambda x: (x.as_subclass(_Sub), x.clone(), _periodic(x)), "plain"),
}


class _Sub(torch.Tensor):
    pass


def _shrunk(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its storage cut to half its elements (what a resized storage leaves)."""
    t.untyped_storage().resize_(t.nbytes // 2)
    return t


@needs_kernels
@pytest.mark.parametrize("case", list(_MALFORMED))
def test_gate_refuses_malformed_operands(case: str) -> None:
    build, match = _MALFORMED[case]
    x, t, at = build(torch.randn(3, 4))
    with pytest.raises(RuntimeError, match=match):
        cpu_bce.forward(x, t, at, "mean")
    with pytest.raises(RuntimeError, match=match):
        cpu_bce.backward(x, t, at, torch.ones(()), "sum", True)


def test_gate_refuses_a_written_operand_overlapping_an_input() -> None:
    """(The bindings write only into tensors they allocate; the shared gate still refuses
    an overlap where a caller hands one over.)"""
    buf, dense = torch.randn(20), torch.contiguous_format
    x = buf[:12].view(3, 4)
    with pytest.raises(RuntimeError, match="loss shares memory with input"):
        guard.check_dense(
            "test", x.dtype, [("input", x, 12, dense)], [("loss", buf[6:18], 12, dense)]
        )
