"""LayerNorm, RMSNorm and GroupNorm beyond the parity table: repr, parameter names and
state_dicts both ways, reset and factory kwargs, float64 gradcheck/gradgradcheck through
the fast path, the inputs torch's own backward cannot take (checked against torch on an
equivalent call), the C kernels' operand checks, and the torch-ops fallback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import gradcheck, gradgradcheck

import reimpl.nn as RN
import reimpl.nn.functional as F
from reimpl.kernels import cpu_norm, guard
from reimpl.kernels.cpu_norm import LAYER, Layout
from reimpl.nn.modules.normalization import GROUP_NORM_BIAS

CONFIGS: list[tuple[str, tuple[Any, ...], dict[str, Any], tuple[int, ...]]] = [
    ("LayerNorm", (5,), {}, (3, 4, 5)),
    ("LayerNorm", ([4, 5],), {"eps": 1e-3}, (3, 4, 5)),
    ("LayerNorm", (torch.Size([5]),), {"bias": False}, (2, 5)),
    ("LayerNorm", ((5,),), {"elementwise_affine": False}, (5,)),
    ("RMSNorm", (5,), {}, (3, 4, 5)),
    ("RMSNorm", ([4, 5],), {"eps": 1e-6}, (3, 4, 5)),
    ("RMSNorm", (5,), {"elementwise_affine": False}, (2, 5)),
    ("GroupNorm", (2, 4), {}, (3, 4, 5)),
    ("GroupNorm", (4, 4), {"affine": False}, (3, 4, 2, 2)),
    ("GroupNorm", (1, 4), {"eps": 1e-3}, (3, 4)),
]
if GROUP_NORM_BIAS:  # (torch's GroupNorm takes bias= from 2.13 on)
    CONFIGS.append(("GroupNorm", (2, 4), {"bias": False}, (3, 4, 5)))
IDS = [f"{c}{a}{k}" for c, a, k, _ in CONFIGS]


def _pair(cls: str, args: tuple[Any, ...], kw: dict[str, Any]) -> tuple[Any, Any]:
    return getattr(RN, cls)(*args, **kw), getattr(torch.nn, cls)(*args, **kw)


@pytest.mark.parametrize(("cls", "args", "kw", "shape"), CONFIGS, ids=IDS)
def test_repr_names_and_state_dict_both_ways(
    cls: str, args: tuple[Any, ...], kw: dict[str, Any], shape: tuple[int, ...]
) -> None:
    ours, theirs = _pair(cls, args, kw)
    assert isinstance(ours, type(theirs))
    assert repr(ours) == repr(theirs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    ours.load_state_dict(theirs.state_dict())  # torch -> reimpl
    x = torch.randn(shape, generator=g)
    torch.testing.assert_close(ours(x), theirs(x))
    fresh = getattr(torch.nn, cls)(*args, **kw)
    fresh.load_state_dict(ours.state_dict())  # reimpl -> torch
    torch.testing.assert_close(fresh(x), ours(x))


def test_reset_parameters_and_factory_kwargs() -> None:
    for m in (
        RN.LayerNorm(3, dtype=torch.float64),
        RN.RMSNorm(3, dtype=torch.float64),
        RN.GroupNorm(1, 3, dtype=torch.float64, device="cpu"),
    ):
        with torch.no_grad():
            for p in m.parameters():
                p.fill_(7.0)
        m.reset_parameters()
        assert all(p.dtype == torch.float64 for p in m.parameters())
        torch.testing.assert_close(m.weight, torch.ones(3, dtype=torch.float64))
        if getattr(m, "bias", None) is not None:
            torch.testing.assert_close(m.bias, torch.zeros(3, dtype=torch.float64))
    assert RN.LayerNorm(4, elementwise_affine=False).weight is None
    assert RN.RMSNorm([2, 3]).normalized_shape == (2, 3)
    if GROUP_NORM_BIAS:
        assert RN.GroupNorm(2, 4, affine=True, bias=False).bias is None
    else:  # refused, as the installed torch refuses it
        with pytest.raises(TypeError, match="bias"):
            torch.nn.GroupNorm(2, 4, bias=False)
        with pytest.raises(TypeError, match="bias"):
            RN.GroupNorm(2, 4, bias=False)


def _ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, [x.shape[-1]], w, b, 1e-3)


def _rms(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, [x.shape[-1]], w) + 0 * b.sum()


def _gn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.group_norm(x, 2, w, b, 1e-3)


@pytest.mark.parametrize("fn", [_ln, _rms, _gn], ids=["layer_norm", "rms_norm", "group_norm"])
def test_gradcheck_and_gradgradcheck_float64(fn: Callable[..., torch.Tensor]) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    c = 4 if fn is _gn else 3
    w = torch.randn(c, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c, generator=g, dtype=torch.float64, requires_grad=True)
    assert type(fn(x, w, b).grad_fn).__name__ in ("NormalizeBackward", "AddBackward0")
    assert gradcheck(fn, (x, w, b))
    assert gradgradcheck(fn, (x, w, b))


def test_fast_path_runs_the_kernel_and_saves_only_input_and_statistics() -> None:
    x = torch.randn(8, 16, requires_grad=True)
    w = torch.randn(16, requires_grad=True)
    out = F.layer_norm(x, [16], w, torch.zeros(16))
    assert type(out.grad_fn).__name__ == "NormalizeBackward"
    assert cpu_norm.usable(x, w)
    assert out.grad_fn is not None
    saved = [t for t in out.grad_fn.saved_tensors if t is not None]  # type: ignore[attr-defined]
    # the input, the parameters, one mean and one rstd per row: nothing input-sized else
    assert sum(t.numel() for t in saved) == x.numel() + 2 * 16 + 2 * 8


_LONG_ROWS: dict[str, tuple[Callable[..., torch.Tensor], tuple[int, ...], int]] = {
    # rows longer than the kernel's 4096-element chunk, off-center by 100 std; over the
    # 32768-element grain in all, so the rows are split over the threads
    "layer_norm": (lambda m, x, w, b: m.layer_norm(x, [x.shape[-1]], w, b), (4, 9000), 9000),
    "rms_norm": (lambda m, x, w, b: m.rms_norm(x, [x.shape[-1]], w), (4, 9000), 9000),
    "group_norm": (lambda m, x, w, b: m.group_norm(x, 2, w, b), (2, 4, 70, 70), 4),
    # and many short rows: each thread adds its rows' dw / db in T and flushes every 32
    "layer_norm many rows": (lambda m, x, w, b: m.layer_norm(x, [400], w, b), (100, 400), 400),
}


@pytest.mark.parametrize("name", list(_LONG_ROWS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_long_off_center_rows_match_torch(name: str, dtype: torch.dtype) -> None:
    """The kernels sum in float lanes flushed to double per chunk and center before squaring;
    rows spanning several chunks with a mean far from 0 (where sum-of-squares formulas
    cancel) must still give torch's values and gradients. At a mean of 100 a float32
    input holds only ~6e-6 of its spread, and torch's float32 result itself is off by up to
    ~2e-5: there, ours must be as close as torch's to torch's float64 result of the same
    values (or within the default tolerance of it)."""
    fn, shape, c = _LONG_ROWS[name]
    g = torch.Generator().manual_seed(7)
    x = (100 + torch.randn(*shape, generator=g)).to(dtype)
    w, b = torch.randn(c, generator=g).to(dtype), torch.randn(c, generator=g).to(dtype)
    dy = torch.randn(*shape, generator=g).to(dtype)
    assert cpu_norm.usable(x, w, b)
    assert type(fn(F, x.requires_grad_(), w, b).grad_fn).__name__ == "NormalizeBackward"
    n_out = 3 if name.startswith("rms_norm") else 4  # (RMS norm has no bias)

    def run(mod: Any, cast: torch.dtype) -> list[torch.Tensor]:
        leaves = [t.detach().to(cast).requires_grad_() for t in (x, w, b)]
        y = fn(mod, *leaves)
        y.backward(dy.to(cast))
        grads = [t.grad for t in leaves]
        return [y.detach(), *(g for g in grads if g is not None)][:n_out]

    ours, theirs, exact = run(F, dtype), run(TF, dtype), run(TF, torch.float64)
    names = ("output", "dx", "dw", "db")[:n_out]
    for what, o, t, e in zip(names, ours, theirs, exact, strict=True):
        if dtype == torch.float64:
            torch.testing.assert_close(o, t, msg=f"{name} {what} differs from torch's")
            continue
        err_o, err_t = ((v.double() - e).abs().max().item() for v in (o, t))
        scale = e.abs().max().item()
        assert err_o <= max(err_t, 1e-5 + 1.3e-6 * scale), (
            f"{name} {what}: reimpl is {err_o:.3g} from torch's float64 result, torch's "
            f"float32 {err_t:.3g} (largest value {scale:.3g})"
        )


@pytest.mark.parametrize("name", ["layer_norm", "group_norm"])
def test_kernel_rows_whose_head_is_off_the_mean_match_torch(name: str) -> None:
    """The statistics are summed around the mean of a row's first 64 elements; a row whose
    head sits far from its mass (here 50 std above it) takes the second, recentered pass,
    and must come out as close to torch's float64 result as torch's float32 does."""
    g = torch.Generator().manual_seed(11)
    shape = (4, 9000) if name == "layer_norm" else (2, 4, 70, 70)
    x = torch.randn(*shape, generator=g)
    x.view(x.shape[0] * (2 if name == "group_norm" else 1), -1)[:, :64] += 50
    fn, _, c = _LONG_ROWS[name]
    w, b = torch.randn(c, generator=g), torch.randn(c, generator=g)
    ours, theirs, exact = (
        fn(m, x.to(dt), w.to(dt), b.to(dt))
        for m, dt in ((F, torch.float32), (TF, torch.float32), (TF, torch.float64))
    )
    err_o, err_t = ((v.double() - exact).abs().max().item() for v in (ours, theirs))
    assert err_o <= max(err_t, 1e-5 + 1.3e-6 * exact.abs().max().item()), (err_o, err_t)


def test_group_norm_bias_without_weight_where_torch_backward_fails() -> None:
    """torch's CPU group norm backward raises with a bias and no weight; reimpl gives the
    gradients torch gives for the same call with a weight of ones."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    up = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    xo, bo = x.clone().requires_grad_(), b.clone().requires_grad_()
    xt, bt = x.clone().requires_grad_(), b.clone().requires_grad_()
    F.group_norm(xo, 2, None, bo).backward(up)
    TF.group_norm(xt, 2, torch.ones(4, dtype=torch.float64), bt).backward(up)
    torch.testing.assert_close((xo.grad, bo.grad), (xt.grad, bt.grad))


def test_layer_norm_float32_bias_beside_half_input_where_torch_backward_fails() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 8, generator=g).half()
    b = torch.randn(8, generator=g)
    up = torch.randn(6, 8, generator=g).half()
    xo, bo = x.clone().requires_grad_(), b.clone().requires_grad_()
    xt, bt = x.clone().requires_grad_(), b.clone().requires_grad_()
    F.layer_norm(xo, [8], None, bo).backward(up)
    TF.layer_norm(xt, [8], torch.ones(8), bt).backward(up)
    # (torch's bias gradient here carries float16 rounding from its sums: float16's bound)
    torch.testing.assert_close((xo.grad, bo.grad), (xt.grad, bt.grad), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("name", ["layer_norm", "rms_norm", "group_norm"])
def test_torch_ops_fallback_without_the_kernels(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No C library (no compiler, REIMPL_DISABLE_CPU_FUSED=1): the Function computes with
    torch ops, and still agrees with torch."""
    monkeypatch.setattr(cpu_norm, "_functions", lambda: None)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 6, 5, generator=g)
    w = torch.randn(6 if name == "group_norm" else 5, generator=g)
    args = (3, w, w.flip(0)) if name == "group_norm" else ([5], w)
    results = []
    for fn in (getattr(F, name), getattr(TF, name)):
        xi, wi = x.clone().requires_grad_(), args[1].clone().requires_grad_()
        out = fn(xi, args[0], wi, *args[2:])
        out.backward(torch.ones_like(out))
        results.append((out, xi.grad, wi.grad))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)


def _operands(rows: int = 3, d: int = 4) -> dict[str, torch.Tensor]:
    return {"x": torch.randn(rows, d), "w": torch.randn(d), "b": torch.randn(d)}


@pytest.mark.parametrize(
    ("break_it", "match"),
    [
        (lambda t: {**t, "x": t["x"].t().contiguous().t()}, "contiguous"),
        (lambda t: {**t, "w": torch.randn(5)}, "elements"),
        (lambda t: {**t, "w": t["w"].double()}, "float32"),
        (lambda t: {**t, "b": t["x"].view(-1)[:5]}, "elements"),
    ],
    ids=["strided input", "weight size", "weight dtype", "bias too long"],
)
def test_kernel_refuses_operands_it_cannot_walk(
    break_it: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]], match: str
) -> None:
    if cpu_norm._functions() is None:
        pytest.skip("no C compiler: the kernels are not built")
    t = break_it(_operands())
    with pytest.raises(RuntimeError, match=match):
        cpu_norm.forward(t["x"], t["w"], t["b"], Layout(3, 1, 4, 1), 1e-5, LAYER)


def test_kernel_gate_refuses_a_written_operand_overlapping_another() -> None:
    x = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="shares memory"):
        dense = torch.contiguous_format
        guard.check_dense("test", x.dtype, [("input", x, 12, dense)], [("output", x[1], 4, dense)])


def test_kernel_backward_refuses_short_statistics() -> None:
    if cpu_norm._functions() is None:
        pytest.skip("no C compiler: the kernels are not built")
    t = _operands()
    at = Layout(3, 1, 4, 1)
    _, mean, rstd = cpu_norm.forward(t["x"], t["w"], t["b"], at, 1e-5, LAYER)
    assert mean is not None
    with pytest.raises(RuntimeError, match="elements"):
        cpu_norm.backward(t["x"], t["x"], t["w"], mean[:2], rstd, at, LAYER, (True, True, True))
    with pytest.raises(RuntimeError, match="mean"):
        cpu_norm.backward(t["x"], t["x"], t["w"], None, rstd, at, LAYER, (True, True, True))


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_mixed_precision_module_matches_torch() -> None:
    """A bfloat16 input through float32 parameters (what a model under CPU autocast hands
    the layer): torch's mixed-dtype kernels, bfloat16 out, float32 parameter gradients."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 6, 8, generator=g).bfloat16()
    for cls, args in (("LayerNorm", (8,)), ("GroupNorm", (3, 6)), ("RMSNorm", (8,))):
        ours, theirs = _pair(cls, args, {})
        outs = []
        for m in (ours, theirs):
            xi = x.clone().requires_grad_()
            out = m(xi)
            out.float().square().sum().backward()
            outs.append((out, xi.grad, m.weight.grad))
        assert outs[0][0].dtype == torch.bfloat16 and outs[0][2].dtype == torch.float32
        torch.testing.assert_close(outs[0], outs[1], rtol=1.6e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_layer_norm_16bit_input_float32_parameter_gradients(dtype: torch.dtype) -> None:
    """Beside a 16-bit input torch rounds layer norm's float32 parameter gradients to 16
    bits after every row (the parity rows leave them out); reimpl sums in float32, as torch
    does for the same values given in float32, which is what it is compared with."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(64, 16, generator=g).to(dtype)
    up = torch.randn(64, 16, generator=g).to(dtype)
    w, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    wo, bo = w.clone().requires_grad_(), b.clone().requires_grad_()
    F.layer_norm(x, [16], wo, bo).backward(up)
    wt, bt = w.clone().requires_grad_(), b.clone().requires_grad_()
    TF.layer_norm(x.float(), [16], wt, bt).backward(up.float())
    # (float32 results from 16-bit-rounded x̂: one 16-bit rounding per term, summed)
    torch.testing.assert_close((wo.grad, bo.grad), (wt.grad, bt.grad), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_layer_norm_16bit_parameter_gradients_few_rows(dtype: torch.dtype) -> None:
    """16-bit parameters beside a 16-bit input: torch's gradients are rounded after every
    row; over a few rows (one thread) that stays within a 16-bit ulp or two of reimpl's
    single rounding."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 16, generator=g).to(dtype)
    up = torch.randn(4, 16, generator=g).to(dtype)
    w, b = torch.randn(16, generator=g).to(dtype), torch.randn(16, generator=g).to(dtype)
    grads = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for fn in (F.layer_norm, TF.layer_norm):
            wi, bi = w.clone().requires_grad_(), b.clone().requires_grad_()
            fn(x, [16], wi, bi).backward(up)
            grads.append((wi.grad, bi.grad))
    finally:
        torch.set_num_threads(threads)
    ulp = 2 * torch.finfo(dtype).eps
    torch.testing.assert_close(grads[0], grads[1], rtol=2 * ulp, atol=2 * ulp)


_CALLS: dict[str, Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]] = {
    "layer_norm": lambda x, w, F: F.layer_norm(x, [5], w, w.flip(0)),
    "rms_norm": lambda x, w, F: F.rms_norm(x, [5], w),
    "group_norm": lambda x, w, F: F.group_norm(x.transpose(1, 2), 5, w, w.flip(0)),
}


@pytest.mark.parametrize("name", list(_CALLS))
def test_compile_fullgraph_matches_torch(name: str) -> None:
    """torch.compile(fullgraph=True) traces the composite form with no graph break."""
    torch._dynamo.reset()
    call = _CALLS[name]
    compiled = torch.compile(lambda x, w: call(x, w, F), fullgraph=True, backend="aot_eager")
    g = torch.Generator().manual_seed(8)
    x, w = torch.randn(3, 4, 5, generator=g), torch.randn(5, generator=g)
    outs = []
    for fn in (compiled, lambda x, w: call(x, w, TF)):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = fn(xi, wi)
        out.backward(torch.ones_like(out))
        outs.append((out, xi.grad, wi.grad))
    torch.testing.assert_close(outs[0], outs[1])


def test_transforms_take_the_composite_form() -> None:
    """Plain autograd runs the Function; torch.func transforms and forward AD the
    composite form (which they can follow)."""
    x, w = torch.randn(3, 5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    names: list[str] = []

    def f(x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x, [5], w)
        names.append(type(y.grad_fn).__name__ if y.grad_fn is not None else "")
        return y.sum()

    f(x.clone().requires_grad_())
    torch.func.grad(f)(x)
    torch.testing.assert_close(
        torch.func.grad(f)(x), torch.func.grad(lambda x: TF.layer_norm(x, [5], w).sum())(x)
    )
    assert names[0] == "NormalizeBackward" and "NormalizeBackward" not in names[1:]
