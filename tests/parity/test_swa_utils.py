"""Weight averaging parity: AveragedModel / avg fns / update_bn against torch.optim.swa_utils.

Both sides run the same tensor operations in the same order, so state_dicts are compared
exactly. (SWALR's lr traces are in the scheduler table, tests/parity/test_lr_scheduler.py.)
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torch.optim.swa_utils as TS
from hypothesis import given
from hypothesis import strategies as st

import reimpl.optim.swa_utils as RS
from reimpl_parity.compare import compare


class _WithInstanceNorm(torch.nn.Module):
    """A BatchNorm net plus an InstanceNorm with running stats that update_bn must skip."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.inorm = torch.nn.InstanceNorm1d(2, track_running_stats=True)
        with torch.no_grad():
            self.inorm.running_mean.fill_(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _model(seed: int, dtype: torch.dtype, device: str) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5), torch.nn.ReLU(), torch.nn.Linear(5, 2)
    ).to(dtype=dtype, device=device)


def _averaged(mod, model, how: str, decay: float, use_buffers: bool):
    if how == "swa":
        return mod.AveragedModel(model, use_buffers=use_buffers)
    if how == "swa-multi":
        return mod.AveragedModel(
            model, multi_avg_fn=mod.get_swa_multi_avg_fn(), use_buffers=use_buffers
        )
    if how == "swa-avg":
        return mod.AveragedModel(model, avg_fn=mod.get_swa_avg_fn(), use_buffers=use_buffers)
    if how == "ema":
        return mod.AveragedModel(model, avg_fn=mod.get_ema_avg_fn(decay), use_buffers=use_buffers)
    return mod.AveragedModel(
        model, multi_avg_fn=mod.get_ema_multi_avg_fn(decay), use_buffers=use_buffers
    )


@given(
    seed=st.integers(0, 2**16),
    how=st.sampled_from(["swa", "swa-multi", "swa-avg", "ema", "ema-multi"]),
    decay=st.sampled_from([0.0, 0.5, 0.9, 0.999, 1.0]),
    use_buffers=st.booleans(),
    updates=st.integers(0, 20),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_averaged_model_parity(
    device: str, seed: int, how: str, decay: float, use_buffers: bool, updates: int, dtype
) -> None:
    model = _model(seed, dtype, device)
    theirs = _averaged(TS, model, how, decay, use_buffers)
    ours = _averaged(RS, model, how, decay, use_buffers)
    g = torch.Generator().manual_seed(seed)
    for _ in range(updates):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g, dtype=dtype).to(device))
        model(torch.randn(6, 3, generator=g, dtype=dtype).to(device))  # moves BN stats
        try:
            theirs.update_parameters(model)
        except RuntimeError as e:  # torch's foreach SWA refuses integer buffers
            with pytest.raises(type(e)):
                ours.update_parameters(model)
            return
        ours.update_parameters(model)
    what = f"{how} state after {updates} updates"
    compare(dict(ours.state_dict()), dict(theirs.state_dict()), rtol=0, atol=0, what=what)
    x = torch.randn(4, 3, generator=g, dtype=dtype).to(device)
    ours.eval()
    theirs.eval()
    compare(ours(x), theirs(x), rtol=0, atol=0, what="forward")
    assert list(ours.state_dict()) == list(theirs.state_dict())


@given(seed=st.integers(0, 2**16), batches=st.integers(0, 5), tuples=st.booleans())
def test_update_bn_parity(device: str, seed: int, batches: int, tuples: bool) -> None:
    model = _WithInstanceNorm(_model(seed, torch.float64, device)).to(device)
    model.net[1].momentum = 0.3
    model.eval()
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(batches)]
    loader = [(x, 0) for x in xs] if tuples else xs
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    TS.update_bn(loader, a, device=device)
    RS.update_bn(loader, b, device=device)
    compare(dict(b.state_dict()), dict(a.state_dict()), rtol=0, atol=0, what="update_bn")
    assert b.net[1].momentum == 0.3 and not b.training
    assert float(b.inorm.running_mean[0]) == 0.5


def test_update_bn_without_batchnorm_is_a_no_op() -> None:
    model = torch.nn.Linear(2, 2).train(False)
    RS.update_bn([torch.randn(1, 2)], model)
    assert not model.training


def test_bad_input_matches_torch() -> None:
    for decay in (-0.1, 1.5):
        for name in ("get_ema_avg_fn", "get_ema_multi_avg_fn"):
            with pytest.raises(ValueError):
                getattr(TS, name)(decay)
            with pytest.raises(ValueError, match="decay"):
                getattr(RS, name)(decay)
    m = torch.nn.Linear(2, 2)
    for mod in (TS, RS):
        with pytest.raises(AssertionError):
            mod.AveragedModel(
                m, avg_fn=mod.get_swa_avg_fn(), multi_avg_fn=mod.get_swa_multi_avg_fn()
            )


@pytest.mark.parametrize(
    "name",
    ["AveragedModel", "SWALR", "update_bn", "get_ema_multi_avg_fn", "get_ema_avg_fn",
     "get_swa_multi_avg_fn", "get_swa_avg_fn"],
)  # fmt: skip
def test_signature_matches_torch(name: str) -> None:
    def params(obj):
        return [(p.name, p.kind, p.default) for p in inspect.signature(obj).parameters.values()]

    assert params(getattr(RS, name)) == params(getattr(TS, name))


def test_swalr_is_an_lr_scheduler() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert isinstance(RS.SWALR(opt, swa_lr=0.05), torch.optim.lr_scheduler.LRScheduler)
