"""reimpl.nn classes where torch's own classes go: torch's functions that look for its
classes by ``isinstance`` (``swa_utils.update_bn``, ``SyncBatchNorm.convert_sync_batchnorm``,
``torch.func.replace_all_batch_norm_modules_``) treat reimpl's layers as torch's, with the
same results as on a model built from torch's layers; copies, pickles, state_dicts and
``torch.compile`` keep working."""

from __future__ import annotations

import copy
import io
import pickle
from typing import Any

import pytest
import torch

import reimpl.nn as RN

LOSSES = [
    "CrossEntropyLoss",
    "NLLLoss",
    "BCELoss",
    "BCEWithLogitsLoss",
    "L1Loss",
    "MSELoss",
    "SmoothL1Loss",
    "HuberLoss",
]
DROPOUTS = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"]
NORMS = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"]


@pytest.mark.parametrize("name", LOSSES + DROPOUTS + NORMS)
def test_instances_are_torch_instances(name: str) -> None:
    args = (3,) if name in NORMS else ()
    m = getattr(RN, name)(*args)
    assert isinstance(m, getattr(torch.nn, name))
    assert type(m).__module__.startswith("reimpl.")


def test_dropout_is_a_torch_dropout() -> None:
    assert isinstance(RN.Dropout(0.2), torch.nn.Dropout)
    assert isinstance(RN.Dropout2d(0.2), torch.nn.modules.dropout._DropoutNd)
    assert not isinstance(RN.Dropout(0.2), torch.nn.Dropout2d)


def _model(ns: Any, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1),
        ns.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 5 * 5, 6),
        ns.BatchNorm1d(6, momentum=0.3),
        torch.nn.Sequential(torch.nn.Linear(6, 3), ns.BatchNorm1d(3, affine=False)),
    )
    with torch.no_grad():  # statistics that update_bn must reset
        for m in model.modules():
            if isinstance(m, ns.BatchNorm1d | ns.BatchNorm2d):
                m.running_mean.fill_(3.0)
                m.running_var.fill_(5.0)
    return model


def test_update_bn_recomputes_reimpl_batch_norm_like_torchs() -> None:
    g = torch.Generator().manual_seed(1)
    loader = [torch.randn(8, 2, 5, 5, generator=g) for _ in range(4)]
    ours, theirs = _model(RN), _model(torch.nn)
    ours.eval()
    theirs.eval()
    torch.optim.swa_utils.update_bn(loader, ours)
    torch.optim.swa_utils.update_bn(loader, theirs)
    assert not ours.training and not theirs.training  # mode restored
    so, st = ours.state_dict(), theirs.state_dict()
    assert list(so) == list(st)
    for key in st:
        torch.testing.assert_close(so[key], st[key], msg=key)
    assert ours[1].running_mean is not None and not torch.equal(
        ours[1].running_mean, torch.full((4,), 3.0)
    )
    assert ours[1].momentum == 0.1 and ours[5].momentum == 0.3  # momenta restored


def test_torch_convert_sync_batchnorm_converts_reimpl_layers() -> None:
    ours, theirs = _model(RN), _model(torch.nn)
    ours[5].eval()
    bn_o = [m for m in ours.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    conv_o = torch.nn.SyncBatchNorm.convert_sync_batchnorm(ours)
    conv_t = torch.nn.SyncBatchNorm.convert_sync_batchnorm(theirs)
    synced_o = [m for m in conv_o.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    synced_t = [m for m in conv_t.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert len(synced_o) == len(synced_t) == len(bn_o) == 3
    assert [type(m) for m in synced_o] == [torch.nn.SyncBatchNorm] * 3  # torch builds its own
    assert repr(conv_o) == repr(conv_t)
    for new, old in zip(synced_o, bn_o, strict=True):
        # the converted layer takes over the reimpl layer's tensors and training mode
        assert new.weight is old.weight and new.bias is old.bias
        assert new.running_mean is old.running_mean and new.running_var is old.running_var
        assert new.num_batches_tracked is old.num_batches_tracked
        assert new.training == old.training


def test_reimpl_convert_sync_batchnorm_still_converts_both() -> None:
    conv = RN.SyncBatchNorm.convert_sync_batchnorm(torch.nn.Sequential(RN.BatchNorm1d(3)))
    assert type(conv[0]) is RN.SyncBatchNorm and isinstance(conv[0], torch.nn.SyncBatchNorm)
    conv = RN.SyncBatchNorm.convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm1d(3)))
    assert type(conv[0]) is RN.SyncBatchNorm


def test_torch_func_replace_all_batch_norm_modules() -> None:
    ours, theirs = _model(RN), _model(torch.nn)
    torch.func.replace_all_batch_norm_modules_(ours)
    torch.func.replace_all_batch_norm_modules_(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(4, 2, 5, 5)
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))  # no running stats: batch statistics


def _make(name: str) -> torch.nn.Module:
    if name in NORMS:
        return getattr(RN, name)(3, momentum=0.2)
    if name == "CrossEntropyLoss":
        return RN.CrossEntropyLoss(weight=torch.rand(3), label_smoothing=0.1)
    if name == "BCEWithLogitsLoss":
        return RN.BCEWithLogitsLoss(pos_weight=torch.rand(3) + 0.5)
    if name in DROPOUTS:
        return getattr(RN, name)(0.3)
    return getattr(RN, name)()


@pytest.mark.parametrize("name", LOSSES + DROPOUTS + NORMS)
def test_deepcopy_pickle_and_torch_save(name: str) -> None:
    m = _make(name)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    copies = [
        copy.deepcopy(m),
        pickle.loads(pickle.dumps(m)),
        torch.load(buf, weights_only=False),
    ]
    for c in copies:
        assert type(c) is type(m) and repr(c) == repr(m)
        assert c.state_dict().keys() == m.state_dict().keys()
        for k, v in m.state_dict().items():
            assert torch.equal(c.state_dict()[k], v)


@pytest.mark.parametrize("name", ["CrossEntropyLoss", "BCEWithLogitsLoss", "HuberLoss"])
def test_loss_modules_compile_fullgraph(name: str) -> None:
    m = _make(name)
    x = torch.randn(4, 3)
    t = torch.tensor([0, 2, 1, 1]) if name == "CrossEntropyLoss" else torch.rand(4, 3)
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, t), m(x, t))
