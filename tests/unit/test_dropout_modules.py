"""Dropout modules and functions beyond the parity table: identity in eval, module API,
bit-identical seeded training runs against torch, the mask × scale gradient, alpha
dropout's statistics, rank rules; and CUDA statistical checks (marked ``cuda``)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as TF

import reimpl.nn as RN
import reimpl.nn.functional as F

FUNCS = ["dropout", "alpha_dropout", "feature_alpha_dropout", "dropout1d", "dropout2d", "dropout3d"]
MODULES = ["Dropout", "AlphaDropout", "FeatureAlphaDropout", "Dropout1d", "Dropout2d", "Dropout3d"]
SHAPE = {
    "dropout": (4, 5),
    "alpha_dropout": (4, 5),
    "feature_alpha_dropout": (4, 5, 3),
    "dropout1d": (4, 5, 3),
    "dropout2d": (4, 5, 3, 2),
    "dropout3d": (2, 5, 3, 2, 2),
}


@pytest.mark.parametrize("fn", FUNCS)
@pytest.mark.parametrize(("p", "training"), [(0.5, False), (0.0, True)])
def test_no_op_returns_the_input_itself(fn: str, p: float, training: bool) -> None:
    x = torch.randn(SHAPE[fn])
    state = torch.get_rng_state()
    assert getattr(F, fn)(x, p, training) is x
    assert getattr(TF, fn)(x, p, training) is x  # torch does the same
    assert torch.equal(torch.get_rng_state(), state)  # and draws nothing


@pytest.mark.parametrize("name", MODULES)
def test_module_api_matches_torch(name: str) -> None:
    ours, theirs = getattr(RN, name)(0.25, inplace=True), getattr(torch.nn, name)(0.25, True)
    assert repr(ours) == repr(theirs)
    assert (ours.p, ours.inplace) == (0.25, True)
    assert repr(getattr(RN, name)()) == repr(getattr(torch.nn, name)())
    with pytest.raises(ValueError, match="between 0 and 1"):
        getattr(RN, name)(1.5)


@pytest.mark.parametrize("fn", FUNCS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_module_train_eval_bit_identical(fn: str, dtype: torch.dtype) -> None:
    name = MODULES[FUNCS.index(fn)]
    x = torch.randn(SHAPE[fn], dtype=torch.float64).to(dtype)
    outs = []
    for ns in (RN, torch.nn):
        m = getattr(ns, name)(0.3)
        torch.manual_seed(7)
        a = m(x)
        m.eval()
        b = m(x)
        outs.append((a, b, torch.get_rng_state()))
    assert torch.equal(outs[0][0], outs[1][0])
    assert outs[0][1] is x and outs[1][1] is x
    assert torch.equal(outs[0][2], outs[1][2])


def test_seeded_training_run_is_unchanged_by_swapping_in_reimpl() -> None:
    """A small MLP with Dropout and AlphaDropout, 5 SGD steps: identical weights."""

    def run(ns: Any) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(8, 16),
            ns.Dropout(0.3),
            torch.nn.SELU(),
            ns.AlphaDropout(0.2),
            torch.nn.Linear(16, 1),
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(5):
            x, y = torch.randn(32, 8), torch.randn(32, 1)
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(RN), run(torch.nn), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.75])
def test_gradient_is_mask_times_scale(p: float) -> None:
    x = (torch.rand(200, 10, dtype=torch.float64) + 0.5).requires_grad_()
    out = F.dropout(x, p)
    (g,) = torch.autograd.grad(out.sum(), x)
    kept = out != 0
    assert torch.equal(g, kept.to(g.dtype) / (1 - p))
    assert torch.equal(out[kept], x[kept] * (1 / (1 - p)))  # x·(1/(1-p)), not x/(1-p)


def test_inplace_writes_into_the_input() -> None:
    x = torch.randn(50, 4) + 10
    torch.manual_seed(3)
    out = F.dropout(x, 0.5, inplace=True)
    assert out is x and bool((x == 0).any())
    y = torch.randn(6, 5)
    torch.manual_seed(3)
    out = F.dropout1d(y, 0.5, inplace=True)  # unbatched: unsqueezed and squeezed in place
    assert out is y and y.shape == (6, 5)


def test_p_one_zeroes_everything_and_p_range() -> None:
    x = torch.randn(3, 4)
    for fn in FUNCS:
        assert torch.equal(
            getattr(F, fn)(torch.randn(SHAPE[fn]), 1.0, True).abs().sum(), torch.tensor(0.0)
        )
        with pytest.raises(ValueError, match="between 0 and 1"):
            getattr(F, fn)(x, -0.01)


def test_channel_rules() -> None:
    x = torch.randn(6, 8, 30) + 5
    torch.manual_seed(0)
    out = F.dropout1d(x, 0.5)
    dropped = (out == 0).all(-1)
    assert torch.equal(dropped, (out == 0).any(-1))  # whole channels
    unbatched = F.dropout1d(torch.randn(8, 30) + 5, 0.5)
    assert torch.equal((unbatched == 0).all(-1), (unbatched == 0).any(-1))
    with pytest.warns(UserWarning, match="3-D input"):
        out2 = F.dropout2d(x, 0.5)  # read as (N, C, L): channel-wise over dims 0 and 1
    assert torch.equal((out2 == 0).all(-1), (out2 == 0).any(-1))
    with pytest.warns(UserWarning, match="deprecated"):
        F.dropout3d(torch.randn(3, 4, 5), 0.5)
    with pytest.raises(RuntimeError, match="dropout1d"):
        F.dropout1d(torch.randn(2, 3, 4, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.dropout2d(torch.randn(2, 3, 4, 5))
        F.dropout3d(torch.randn(2, 3, 4, 5))


def test_alpha_dropout_constants_and_moments() -> None:
    p, alpha = 0.2, -1.7580993408473766
    a = 1 / math.sqrt((alpha**2 * p + 1) * (1 - p))
    b = -a * alpha * p
    x = torch.randn(400_000, dtype=torch.float64)
    torch.manual_seed(0)
    out = F.alpha_dropout(x, p, training=True)
    dropped = torch.isclose(out, torch.tensor(a * alpha + b, dtype=torch.float64))
    assert torch.allclose(out[~dropped], x[~dropped] * a + b)
    assert abs(float(dropped.double().mean()) - p) < 0.005
    assert abs(float(out.mean())) < 0.01 and abs(float(out.var()) - 1) < 0.01  # self-normalizing


# ---------------------------------------------------------------------------- CUDA


def _binomial_ok(kept: int, n: int, q: float, z: float = 6.0) -> bool:
    return abs(kept - n * q) <= z * math.sqrt(n * q * (1 - q)) + 1


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_cuda_dropout_scaling_rate_and_gradient(dtype: torch.dtype, p: float) -> None:
    x = (torch.rand(1000, 1000, device="cuda", dtype=torch.float64) + 0.5).to(dtype)
    x.requires_grad_()
    out = F.dropout(x, p)
    kept = out != 0
    scale = torch.tensor(1 / (1 - p), dtype=dtype, device="cuda")
    assert torch.equal(out[kept], x.detach()[kept] * scale)
    assert _binomial_ok(int(kept.sum()), x.numel(), 1 - p)
    ref_kept = TF.dropout(x.detach(), p) != 0  # torch's own rate, same bound
    assert _binomial_ok(int(ref_kept.sum()), x.numel(), 1 - p)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(g, kept.to(dtype) * scale)
    assert F.dropout(x, p, training=False) is x


@pytest.mark.cuda
@pytest.mark.parametrize("fn", ["dropout1d", "dropout2d", "dropout3d", "feature_alpha_dropout"])
def test_cuda_channel_dropout_rate(fn: str) -> None:
    shape = {"dropout1d": (500, 400, 3), "dropout2d": (500, 400, 2, 2)}.get(fn, (500, 400, 2, 2, 1))
    x = torch.rand(shape, device="cuda") + 1
    out = getattr(F, fn)(x, 0.3)
    flat = out.flatten(2)
    dropped = (
        (flat == flat[..., :1]).all(-1) if fn == "feature_alpha_dropout" else (flat == 0).all(-1)
    )
    assert _binomial_ok(int((~dropped).sum()), dropped.numel(), 0.7)


@pytest.mark.cuda
def test_cuda_alpha_dropout_moments_and_eval() -> None:
    x = torch.randn(2_000_000, device="cuda")
    out = F.alpha_dropout(x, 0.1, training=True)
    assert abs(float(out.mean())) < 0.01 and abs(float(out.var()) - 1) < 0.01
    assert F.alpha_dropout(x, 0.1, training=False) is x


@pytest.mark.cuda
@pytest.mark.parametrize("fn", ["alpha_dropout", "feature_alpha_dropout", "dropout2d"])
def test_cuda_non_fused_variants_bit_identical(fn: str) -> None:
    """torch sends only plain dropout to its fused CUDA kernel; the alpha and channel-wise
    variants draw with ``bernoulli_`` as on CPU, so reimpl should match them bit for bit
    (expected from torch's source layout, not yet run on a GPU)."""
    x = torch.randn(SHAPE[fn] if fn != "dropout2d" else (4, 5, 3, 2), device="cuda")
    outs = []
    for f in (getattr(F, fn), getattr(TF, fn)):
        torch.cuda.manual_seed(11)
        outs.append(f(x, 0.4, True))
    assert torch.equal(*outs)
