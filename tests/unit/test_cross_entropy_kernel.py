"""The C kernel of class-index cross-entropy (``reimpl.kernels.cpu_cross_entropy``) against
torch's ``F.cross_entropy`` (the oracle): float32/float64, every reduction, class weights,
ignored rows (some, all), label smoothing, C = 1 / 3 / 1000 and a size past the thread
grain, extreme logits (±inf, ±1e4, nan), forward and backward -- each checked to have run
in C --, a per-row scale and the in-place gradient of the row step itself, the fallback to
torch ops, out-of-range targets, and the operand gate every pointer passes before C."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as TF

import reimpl.nn.functional as F
from reimpl.kernels import cpu_cross_entropy as ce
from reimpl.nn.functional import _cross_entropy_lean as lean

needs_kernels = pytest.mark.skipif(
    ce._functions() is None, reason="no C compiler: the kernel is not built"
)


class Case(NamedTuple):
    shape: tuple[int, int]
    weight: bool = False
    smoothing: float = 0.0
    ignored: str = "none"  # which rows carry ignore_index: "none", "some" or "all"
    extremes: bool = False
    large: bool = False  # the extremes' big logit is 1e4 (else 60)


#: every case at torch.testing.assert_close's per-dtype defaults: the same formulas, row
#: sums in double, the float32 exp within about 1 ulp, so nothing needs loosening
CASES = {
    "C=1": Case((7, 1)),
    "C=3": Case((5, 3), weight=True),
    "C=1000": Case((6, 1000)),
    "C=1000 smoothing": Case((6, 1000), smoothing=0.2),
    "C=1000 weight smoothing": Case((6, 1000), weight=True, smoothing=0.2, ignored="some"),
    # 260 x 257 = 66820: past the kernel's thread grain (32768), a class count that is not a
    # multiple of the vector width (the lanes end mid-vector)
    "threaded": Case((260, 257), weight=True, ignored="some"),
    "threaded smoothing": Case((260, 257), smoothing=0.2, ignored="some"),
    "all ignored": Case((4, 9), weight=True, smoothing=0.2, ignored="all"),
    "extremes": Case((6, 37), ignored="some", extremes=True),
    "extremes weight smoothing": Case((6, 37), weight=True, smoothing=0.2, extremes=True),
    # one logit 1e4 over ~±10 (float32: 1e4 has a 1e-3 ulp): where torch's log-softmax
    # rounds x - m - log s, ours rounds log s - (x - m); both stay within the defaults
    "large logits": Case((8, 300), smoothing=0.2, extremes=True, large=True),
}


def _inputs(case: Case, dtype: torch.dtype, seed: int = 0) -> tuple[Any, ...]:
    g = torch.Generator().manual_seed(seed)
    n, c = case.shape
    x = torch.randn(case.shape, generator=g, dtype=dtype) * 4
    t = torch.randint(0, c, (n,), generator=g)
    if case.ignored == "some":
        t[::3] = -100
    elif case.ignored == "all":
        t[:] = -100
    if case.extremes:
        x[0, :2] = float("-inf")  # a row with -inf logits (not all)
        x[1, 1] = float("nan")  # nan propagates into its row's loss and gradient
        x[2, :] = float("-inf")  # every logit -inf: nan, as torch's
        x[3, 0] = 1e4 if case.large else 60.0
        x[4, 0] = float("inf")
    w = torch.rand(c, generator=g, dtype=dtype) + 0.5 if case.weight else None
    return x, t, w


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the C functions called (the binding's kernels, wrapped)."""
    calls: list[str] = []
    fns = ce._functions()
    assert fns is not None

    def wrap(name: str, fn: Any) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            calls.append(name)
            return fn(*args)

        return call

    wrapped = {name: wrap(name, fn) for name, fn in fns.items()}
    monkeypatch.setattr(ce, "_functions", lambda: wrapped)
    yield calls


def _both(
    x: torch.Tensor,
    t: torch.Tensor,
    w: torch.Tensor | None,
    reduction: str,
    smoothing: float,
    view: Callable[[torch.Tensor], torch.Tensor] = lambda a: a,
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(loss, logits gradient) from reimpl and from torch, for one upstream gradient;
    ``view``: what the losses see of the logits (the gradient is the leaf's)."""
    results = []
    up = None
    for fn in (F.cross_entropy, TF.cross_entropy):
        xi = x.clone().requires_grad_()
        out = fn(view(xi), t, w, reduction=reduction, label_smoothing=smoothing)
        if up is None:
            g = torch.Generator().manual_seed(1)
            up = torch.rand(out.shape, generator=g, dtype=out.dtype) + 0.5
        out.backward(up)
        results.append((out.detach(), xi.grad))
    return results


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_torch(
    name: str, reduction: str, dtype: torch.dtype, spy: list[str]
) -> None:
    case = CASES[name]
    x, t, w = _inputs(case, dtype)
    ours, theirs = _both(x, t, w, reduction, case.smoothing)
    assert spy == [f"ce_rows_{ce._DTYPES[dtype]}"]
    torch.testing.assert_close(ours, theirs, equal_nan=True)


@needs_kernels
def test_forward_only_runs_the_kernel_without_a_gradient(spy: list[str]) -> None:
    x, t, w = _inputs(CASES["C=1000 weight smoothing"], torch.float32)
    with torch.no_grad():
        ours = F.cross_entropy(x, t, w, reduction="none", label_smoothing=0.2)
    theirs = TF.cross_entropy(x, t, w, reduction="none", label_smoothing=0.2)
    assert spy == ["ce_rows_f32"]
    torch.testing.assert_close(ours, theirs)


@needs_kernels
def test_one_sample_of_class_logits(spy: list[str]) -> None:
    """(C,) logits and a 0-d target: the lean path's one-row form."""
    x = torch.randn(11, dtype=torch.float64)
    t = torch.tensor(4)
    ours, theirs = _both(x, t, None, "none", 0.1)
    assert spy == ["ce_rows_f64"]
    torch.testing.assert_close(ours, theirs)


@needs_kernels
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_ignore_index_that_is_a_class(smoothing: float, spy: list[str]) -> None:
    """ignore_index = 2, a valid class: its rows are skipped, other rows still see the
    class in their softmax and smoothing terms."""
    x, t, w = _inputs(CASES["C=3"], torch.float32)
    results = []
    for fn in (F.cross_entropy, TF.cross_entropy):
        xi = x.clone().requires_grad_()
        out = fn(xi, t, w, ignore_index=2, label_smoothing=smoothing)
        out.backward()
        results.append((out.detach(), xi.grad))
    assert spy == ["ce_rows_f32"] and (t == 2).any() and (t != 2).any()
    torch.testing.assert_close(results[0], results[1])


@needs_kernels
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_step_with_a_per_row_scale(dtype: torch.dtype, in_place: bool) -> None:
    """The row step as linear_cross_entropy calls it: one scale per row, the gradient
    written over the logits; against torch's gradient of sum_n scale_n loss_n."""
    case = CASES["C=1000 weight smoothing"]
    x, t, w = _inputs(case, dtype)
    scale = torch.rand(x.shape[0], 1, dtype=dtype) + 0.5
    xi = x.clone().requires_grad_()
    loss = TF.cross_entropy(xi, t, w, reduction="none", label_smoothing=0.2)
    (loss * scale.squeeze(1)).sum().backward()
    logits = x.clone()
    ours, grad = ce.rows(logits, t, w, -100, 0.2, scale, True, in_place=in_place)
    assert (grad is logits) == in_place
    torch.testing.assert_close((ours, grad), (loss.detach(), xi.grad))


@needs_kernels
def test_repeated_calls_are_bitwise_equal() -> None:
    x, t, w = _inputs(CASES["threaded smoothing"], torch.float32)
    first = ce.rows(x, t, w, -100, 0.2, torch.ones(1), True)
    for _ in range(3):
        again = ce.rows(x, t, w, -100, 0.2, torch.ones(1), True)
        assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])  # type: ignore[arg-type]


_DECLINED: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "strided logits": lambda x: x.t().contiguous().t(),
    "the first columns of a wider tensor": lambda x: x[:, :2],
}


@needs_kernels
@pytest.mark.parametrize("case", list(_DECLINED))
def test_layouts_left_to_torch_ops(case: str, spy: list[str]) -> None:
    x, t, _ = _inputs(CASES["C=3"], torch.float32)
    view = _DECLINED[case]
    c = view(x).shape[1]
    assert lean.rows_impl(view(x)) is lean._rows_eager
    ours, theirs = _both(x, t.clamp(max=c - 1), torch.rand(c) + 0.5, "mean", 0.1, view)
    assert spy == []
    torch.testing.assert_close(ours, theirs)


def test_torch_ops_fallback_without_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ce, "_functions", lambda: None)
    x, t, w = _inputs(CASES["extremes weight smoothing"], torch.float32)
    assert lean.rows_impl(x) is lean._rows_eager
    ours, theirs = _both(x, t, w, "none", 0.2)
    torch.testing.assert_close(ours, theirs, equal_nan=True)


@pytest.mark.parametrize("target", [5, -1, -7])
def test_out_of_range_targets_raise_torchs_type(target: int) -> None:
    x, t = torch.randn(3, 5), torch.tensor([0, target, 1])
    with pytest.raises(IndexError):
        TF.cross_entropy(x, t)
    with pytest.raises(IndexError, match="out of bounds"):
        F.cross_entropy(x, t)


@needs_kernels
def test_kernel_refuses_an_out_of_range_target_before_writing() -> None:
    """The row step called directly (no caller checked the targets): the kernel's own
    check raises before anything is written, even over the logits."""
    x = torch.randn(4, 5)
    logits = x.clone()
    t = torch.tensor([0, 1, 5, 2])
    with pytest.raises(IndexError, match="Target 5"):
        ce.rows(logits, t, None, -100, 0.0, torch.ones(1), True, in_place=True)
    assert torch.equal(logits, x)


# ------------------------------------------------------------------------ the operand gate


def _never_called(*_: Any) -> int:
    raise AssertionError("a malformed operand reached the C kernel")


@pytest.fixture
def no_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels that fail the test if called: the gate must refuse before them."""
    monkeypatch.setattr(
        ce, "_functions", lambda: dict.fromkeys(("ce_rows_f32", "ce_rows_f64"), _never_called)
    )


def _shrunk(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its storage cut to half its elements (what a resized storage leaves)."""
    t.untyped_storage().resize_(t.nbytes // 2)
    return t


def _operands() -> dict[str, Any]:
    x = torch.randn(4, 6)
    return {
        "x": x,
        "t": torch.tensor([0, 1, 2, 3]),
        "weight": torch.rand(6),
        "scale": torch.ones(1),
        "loss": torch.empty(4),
        "out": torch.empty(4, 6),
    }


_MALFORMED: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    "int32 target": (lambda o: {**o, "t": o["t"].int()}, "int64"),
    "target of another size": (lambda o: {**o, "t": torch.tensor([0, 1, 2])}, "elements"),
    "target past its storage": (lambda o: {**o, "t": _shrunk(o["t"])}, "storage"),
    "strided target": (lambda o: {**o, "t": torch.tensor([0, 0, 1, 0, 2, 0, 3, 0])[::2]}, "dense"),
    "weight of another size": (lambda o: {**o, "weight": torch.rand(5)}, "elements"),
    "float64 weight": (lambda o: {**o, "weight": o["weight"].double()}, "float32"),
    "strided logits": (lambda o: {**o, "x": torch.randn(6, 4).t()}, "dense"),
    "subclass logits": (lambda o: {**o, "x": o["x"].as_subclass(_Sub)}, "plain"),
    "scale of another size": (lambda o: {**o, "scale": torch.ones(3)}, "one per row"),
    "gradient of another size": (lambda o: {**o, "out": torch.empty(4, 5)}, "elements"),
    "loss past its storage": (lambda o: {**o, "loss": _shrunk(torch.empty(4))}, "storage"),
    "float64 gradient": (lambda o: {**o, "out": o["out"].double()}, "float32"),
    # a view of the logits, not the logits themselves: the kernel would write what it reads
    "gradient overlapping the logits": (lambda o: {**o, "out": o["x"].view(4, 6)}, "shares memory"),
}


class _Sub(torch.Tensor):
    pass


@pytest.mark.usefixtures("no_c")
@pytest.mark.parametrize("case", list(_MALFORMED))
def test_gate_refuses_malformed_operands_before_the_kernel(case: str) -> None:
    build, match = _MALFORMED[case]
    o = build(_operands())
    with pytest.raises(RuntimeError, match=match):
        ce.run(o["x"], o["t"], o["weight"], o["scale"], o["loss"], o["out"], -100, 0.0)


@pytest.mark.usefixtures("no_c")
def test_gate_refuses_in_place_logits_that_overlap_the_weight() -> None:
    buf = torch.randn(30)
    x, weight = buf[:24].view(4, 6), buf[20:26]
    with pytest.raises(RuntimeError, match="shares memory"):
        ce.run(x, torch.tensor([0, 1, 2, 3]), weight, torch.ones(1), torch.empty(4), x, -100, 0.0)
