"""SyncBatchNorm in one process: signature, checks, fallback, convert_sync_batchnorm.

Without an initialized process group both torch's and ours are plain batch norm (torch's
then accepts CPU tensors), so they are compared directly here; the synchronized path runs
in tests/distributed.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import reimpl.nn
from reimpl._compat import NORM_BIAS
from reimpl_parity.compare import TOLERANCES, compare


def test_signature_matches_torch() -> None:
    ours = inspect.signature(reimpl.nn.SyncBatchNorm.__init__)
    theirs = inspect.signature(torch.nn.SyncBatchNorm.__init__)
    assert [(p.name, p.default, p.kind) for p in ours.parameters.values()] == [
        (p.name, p.default, p.kind) for p in theirs.parameters.values()
    ]
    assert str(reimpl.nn.SyncBatchNorm(4)) == str(torch.nn.SyncBatchNorm(4))


@pytest.mark.parametrize(
    ("shape", "channels"), [((3,), 3), ((4, 0), 1), ((4, 0, 3), 1)], ids=["1d", "no_ch", "no_ch_3d"]
)
def test_input_checks_match_torch(shape: tuple[int, ...], channels: int) -> None:
    x = torch.randn(shape)
    with pytest.raises(ValueError) as theirs:
        torch.nn.SyncBatchNorm(channels)(x)
    with pytest.raises(ValueError) as ours:
        reimpl.nn.SyncBatchNorm(channels)(x)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}]
    + [{"bias": False}] * NORM_BIAS,  # (torch's batch norms take bias= from 2.12 on)
    ids=str,
)
@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 6), (2, 3, 4, 4), (2, 3, 2, 2, 3)], ids=str)
def test_undistributed_is_plain_batch_norm(kwargs: dict, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    ours = reimpl.nn.SyncBatchNorm(3, **kwargs).double()
    theirs = torch.nn.SyncBatchNorm(3, **kwargs).double()
    if ours.weight is not None:
        with torch.no_grad():
            for m in (ours, theirs):
                m.weight.copy_(torch.tensor([0.5, 1.5, 2.0]))
    rtol, atol = TOLERANCES[torch.float64]
    for step in range(2):
        x = torch.randn(shape, dtype=torch.float64)
        g = torch.randn(shape, dtype=torch.float64)
        xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        yo, yt = ours(xo), theirs(xt)
        (yo * g).sum().backward()
        (yt * g).sum().backward()
        compare(yo, yt, rtol=rtol, atol=atol, what=f"output {step}")
        compare(xo.grad, xt.grad, rtol=rtol, atol=atol, what=f"input grad {step}")
        compare(
            [p.grad for p in ours.parameters()],
            [p.grad for p in theirs.parameters()],
            rtol=rtol,
            atol=atol,
            what="param grads",
        )
        compare(list(ours.buffers()), list(theirs.buffers()), rtol=rtol, atol=atol, what="buffers")
    ours.eval()
    theirs.eval()
    x = torch.randn(shape, dtype=torch.float64)
    compare(ours(x), theirs(x), rtol=rtol, atol=atol, what="eval")


NO_BIAS = {"bias": False} if NORM_BIAS else {}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    inner = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4, momentum=None))
    return torch.nn.Sequential(
        torch.nn.Linear(2, 3),
        reimpl.nn.BatchNorm1d(3, eps=1e-3, affine=True),
        torch.nn.ModuleDict({"inner": inner, "bn3": reimpl.nn.BatchNorm3d(2, **NO_BIAS)}),
        torch.nn.SyncBatchNorm(5, track_running_stats=False),
        reimpl.nn.BatchNorm1d(6, affine=False),
    )


def test_convert_sync_batchnorm_ours_and_torchs() -> None:
    model = _model()
    model[1].weight.requires_grad_(False)
    model[1].running_mean.add_(1.0)
    model[2]["inner"][1].eval()
    old = {n: m for n, m in model.named_modules()}
    old_params = dict(model.named_parameters())
    old_buffers = dict(model.named_buffers())
    group = object()
    converted = reimpl.nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)
    assert converted is model
    for name in ("1", "2.inner.1", "2.bn3", "3", "4"):
        new = converted.get_submodule(name)
        assert type(new) is reimpl.nn.SyncBatchNorm, name
        assert new.process_group is group
        before = old[name]
        for attr in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
            assert getattr(new, attr) == getattr(before, attr), (name, attr)
        assert (new.bias is None) == (before.bias is None)
        assert new.training == before.training
    assert type(converted[0]) is torch.nn.Linear
    for n, p in converted.named_parameters():
        assert p is old_params[n], n
    for n, b in converted.named_buffers():
        assert b is old_buffers[n], n
    assert not converted[1].weight.requires_grad
    assert not converted[2]["inner"][1].training
    # Same structure as torch's conversion of the same model (all-torch copy).
    torch_model = _model()
    torch_model[1] = torch.nn.BatchNorm1d(3, eps=1e-3)
    torch_model[2]["bn3"] = torch.nn.BatchNorm3d(2, **NO_BIAS)
    torch_model[4] = torch.nn.BatchNorm1d(6, affine=False)
    theirs = torch.nn.SyncBatchNorm.convert_sync_batchnorm(torch_model)
    assert converted.state_dict().keys() == theirs.state_dict().keys()
    assert repr(converted).replace("reimpl", "") == repr(theirs).replace("reimpl", "")


def test_convert_root_batchnorm_returns_new_module() -> None:
    bn = reimpl.nn.BatchNorm2d(4)
    bn.qconfig = "q"  # type: ignore[assignment]
    new = reimpl.nn.SyncBatchNorm.convert_sync_batchnorm(bn)
    assert type(new) is reimpl.nn.SyncBatchNorm and new is not bn
    assert new.weight is bn.weight and new.running_var is bn.running_var
    assert new.qconfig == "q"
    assert new.process_group is None
