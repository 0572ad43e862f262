"""BatchNorm modules beyond the parity table: state_dicts both ways (incl. old checkpoints
without ``num_batches_tracked``), reset methods, repr, factory kwargs, cumulative moving
average, untracked statistics, double backward, badly scaled inputs, errors."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import gradcheck, gradgradcheck

import reimpl.nn as RN
import reimpl.nn.functional as F
from reimpl._compat import NORM_BIAS

SHAPES = {"BatchNorm1d": (6, 3, 4), "BatchNorm2d": (4, 3, 3, 2), "BatchNorm3d": (2, 3, 2, 2, 3)}
CONFIGS = [
    {},
    {"momentum": None},
    {"affine": False},
    {"track_running_stats": False},
    {"eps": 1e-3, "momentum": 0.5},
]
if NORM_BIAS:  # (torch's batch norms take bias= from 2.12 on)
    CONFIGS.append({"bias": False})


def _pair(name: str, **kw: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    return getattr(RN, name)(3, **kw), getattr(torch.nn, name)(3, **kw)


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("kw", CONFIGS, ids=str)
def test_steps_repr_and_state_dict_match_torch(name: str, kw: dict) -> None:
    ours, theirs = _pair(name, **kw)
    assert repr(ours) == repr(theirs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    g = torch.Generator().manual_seed(0)
    for step, train in enumerate([True, True, False, True, False, True]):
        ours.train(train)
        theirs.train(train)
        x = torch.randn(SHAPES[name], generator=g) * (step + 1) + step
        torch.testing.assert_close(ours(x), theirs(x))
    so, st = ours.state_dict(), theirs.state_dict()
    assert list(so) == list(st)
    for k in st:
        torch.testing.assert_close(so[k], st[k])
    assert so._metadata[""]["version"] == st._metadata[""]["version"] == 2  # type: ignore[attr-defined]
    fresh_o, fresh_t = _pair(name, **kw)
    fresh_o.load_state_dict(st)  # torch -> reimpl
    fresh_t.load_state_dict(so)  # reimpl -> torch
    for k in st:
        torch.testing.assert_close(fresh_o.state_dict()[k], st[k])
        torch.testing.assert_close(fresh_t.state_dict()[k], so[k])


@pytest.mark.parametrize("version", [None, 1])
def test_old_checkpoint_without_counter_loads_like_torch(version: int | None) -> None:
    ours, theirs = _pair("BatchNorm1d")
    for m in (ours, theirs):
        m.num_batches_tracked.fill_(7)
    ckpt = OrderedDict((k, v) for k, v in torch.nn.BatchNorm1d(3).state_dict().items())
    del ckpt["num_batches_tracked"]
    ckpt._metadata = OrderedDict({"": {} if version is None else {"version": version}})  # type: ignore[attr-defined]
    for m in (ours, theirs):
        result = m.load_state_dict(ckpt, strict=True)
        assert not result.missing_keys
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 7
    # a version-2 checkpoint without the counter is simply missing a key, in both
    ckpt._metadata = OrderedDict({"": {"version": 2}})  # type: ignore[attr-defined]
    for m in (ours, theirs):
        with pytest.raises(RuntimeError, match="num_batches_tracked"):
            m.load_state_dict(ckpt)
    # and a meta-device module gets a fresh 0 counter
    for ns in (RN, torch.nn):
        m = ns.BatchNorm1d(3, device="meta")
        ckpt._metadata = OrderedDict({"": {"version": 1}})  # type: ignore[attr-defined]
        m.load_state_dict(ckpt, assign=True)
        assert int(m.num_batches_tracked) == 0


def test_reset_methods_and_factory_kwargs() -> None:
    m = RN.BatchNorm2d(4, dtype=torch.float64)
    assert m.weight.dtype == m.running_mean.dtype == torch.float64
    assert m.num_batches_tracked.dtype == torch.long
    m(torch.randn(3, 4, 2, 2, dtype=torch.float64))
    with torch.no_grad():
        m.weight.mul_(3)
    assert int(m.num_batches_tracked) == 1
    m.reset_running_stats()
    assert torch.equal(m.running_mean, torch.zeros(4, dtype=torch.float64))
    assert torch.equal(m.running_var, torch.ones(4, dtype=torch.float64))
    assert int(m.num_batches_tracked) == 0 and float(m.weight.detach()[0]) != 1
    m.reset_parameters()
    assert torch.equal(m.weight, torch.ones(4, dtype=torch.float64))
    assert torch.equal(m.bias, torch.zeros(4, dtype=torch.float64))
    untracked = RN.BatchNorm1d(2, affine=False, track_running_stats=False)
    assert untracked.weight is None and untracked.running_mean is None
    untracked.reset_parameters()  # no-ops without parameters/statistics
    meta = RN.BatchNorm1d(5, device="meta")
    assert meta.weight.device.type == "meta"


def test_cumulative_average_and_untracked_eval() -> None:
    m = RN.BatchNorm1d(3, momentum=None)
    xs = [torch.randn(8, 3) * (i + 1) for i in range(4)]
    for x in xs:
        m(x)
    mean = torch.stack([x.mean(0) for x in xs]).mean(0)
    torch.testing.assert_close(m.running_mean, mean)
    var = torch.stack([x.var(0) for x in xs]).mean(0)
    torch.testing.assert_close(m.running_var, var)  # unbiased batch variances, averaged
    u = RN.BatchNorm1d(3, track_running_stats=False).eval()
    x = torch.randn(10, 3) * 5 + 2
    y = u(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(3), atol=1e-5, rtol=0)  # batch stats


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 4)])
def test_double_backward_float64(training: bool, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    c = shape[1]
    w = torch.randn(c, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c, generator=g, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.zeros(c, dtype=torch.float64), torch.rand(c, dtype=torch.float64) + 0.5

    def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, rm.clone(), rv.clone(), w, b, training)

    assert gradcheck(fn, (x, w, b))
    assert gradgradcheck(fn, (x, w, b))
    # and the second derivatives agree with torch's
    up = torch.randn(shape, generator=g, dtype=torch.float64)
    results = []
    for f in (F.batch_norm, TF.batch_norm):
        out = f(x, rm.clone(), rv.clone(), w, b, training)
        gx, gw = torch.autograd.grad(out, (x, w), up, create_graph=True)
        results.append(
            torch.autograd.grad((gx**2).sum() + (gw**3).sum(), (x, w, b), allow_unused=True)
        )
    for a, t in zip(*results, strict=True):
        if t is None:
            assert a is None or torch.count_nonzero(a) == 0
        else:
            torch.testing.assert_close(a, t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tiny_and_offset_inputs(dtype: torch.dtype) -> None:
    """Badly scaled inputs (left out of the parity table's regimes): values and gradients
    agree relative to their largest magnitude."""
    g = torch.Generator().manual_seed(2)
    for scale, offset in [(1e-4, 0.0), (1e-3, 1.0), (1e4, 1e5)]:
        base = (torch.randn(16, 3, 5, generator=g, dtype=torch.float64) * scale + offset).to(dtype)
        up = torch.randn(16, 3, 5, generator=g, dtype=torch.float64).to(dtype)
        res = []
        for f in (F.batch_norm, TF.batch_norm):
            x = base.clone().requires_grad_()
            w = torch.ones(3, dtype=dtype, requires_grad=True)
            out = f(x, None, None, w, None, True)
            res.append((out.detach(), *torch.autograd.grad(out, (x, w), up)))
        for a, t in zip(*res, strict=True):
            tol = 1e-4 if dtype == torch.float32 else 1e-9
            assert float((a - t).abs().max()) <= tol * float(t.abs().max()), (scale, offset)


def test_mixed_precision_module() -> None:
    """A float32 module on a bfloat16/float16 input (torch allows it on CPU)."""
    for dtype in (torch.bfloat16, torch.float16):
        ours, theirs = _pair("BatchNorm2d")
        x = torch.randn(4, 3, 2, 2).to(dtype)
        o, t = ours(x), theirs(x)
        assert o.dtype == t.dtype == dtype
        torch.testing.assert_close(o, t, atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(ours.running_var, theirs.running_var)


def test_errors() -> None:
    m = RN.BatchNorm1d(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        m(torch.randn(1, 3))
    m.eval()
    assert m(torch.randn(1, 3)).shape == (1, 3)  # fine in eval
    with pytest.raises(ValueError, match=r"expected 2D or 3D input \(got 4D input\)"):
        m(torch.randn(2, 3, 4, 5))
    with pytest.raises(RuntimeError, match="running_mean should contain 4 elements not 3"):
        RN.BatchNorm1d(3)(torch.randn(5, 4))
    with pytest.raises(ValueError, match="expected 4D input"):
        RN.BatchNorm2d(3)(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="expected 5D input"):
        RN.BatchNorm3d(3)(torch.randn(2, 3, 4, 4))
