"""TorchScript: every reimpl module torch can script scripts too, and agrees.

One row per module configuration. Each row compares, on the same inputs: our scripted
module vs our eager module vs torch's scripted module (and torch's eager one). Batch norm
also compares the running statistics and counter after the forward (train and eval).
Dropout in train mode draws from the same seed: ours scripted, ours eager and torch's
scripted give the same numbers (our eager dropout is bit-identical to torch's on CPU).
``SyncBatchNorm`` is not here: torch's own does not script (its forward calls
``torch.distributed``).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

import reimpl.nn as R
from reimpl._compat import NORM_BIAS

g = torch.Generator().manual_seed(0)
X = torch.randn(4, 3, generator=g)
X1 = torch.randn(3, generator=g)
X3 = torch.randn(4, 3, 5, generator=g)
X4 = torch.randn(3, 3, 2, 2, generator=g)
X5 = torch.randn(2, 3, 2, 2, 2, generator=g)
IDX = torch.tensor([0, 2, 1, 2])
IDX_IGN = torch.tensor([0, -100, 1, 2])
IDX3 = torch.randint(0, 3, (4, 5), generator=g)
PROBS = torch.rand(4, 3, generator=g).div(1.5)  # not normalized: any non-negative weights
U = torch.rand(4, 3, generator=g).clamp(0.05, 0.95)
T = torch.rand(4, 3, generator=g)
Y = torch.randn(4, 3, generator=g)
W = torch.tensor([0.2, 1.0, 3.0])

Row = tuple[str, Callable[[Any], torch.nn.Module], dict[str, Any], tuple[torch.Tensor, ...]]

LOSSES: list[Row] = [
    ("ce", lambda nn: nn.CrossEntropyLoss(), {}, (X, IDX)),
    ("ce_1d", lambda nn: nn.CrossEntropyLoss(), {}, (X1, IDX[1])),
    ("ce_nd_sum", lambda nn: nn.CrossEntropyLoss(reduction="sum"), {}, (X3, IDX3)),
    ("ce_weight_ignore", lambda nn: nn.CrossEntropyLoss(W, ignore_index=-100), {}, (X, IDX_IGN)),
    ("ce_ls", lambda nn: nn.CrossEntropyLoss(label_smoothing=0.2), {}, (X, IDX_IGN)),
    (
        "ce_ls_weight",
        lambda nn: nn.CrossEntropyLoss(W, label_smoothing=0.1, ignore_index=2),
        {},
        (X, IDX),
    ),
    (
        "ce_ls_none",
        lambda nn: nn.CrossEntropyLoss(reduction="none", label_smoothing=0.3),
        {},
        (X, IDX),
    ),
    ("ce_probs", lambda nn: nn.CrossEntropyLoss(), {}, (X, PROBS)),
    ("ce_probs_w_ls", lambda nn: nn.CrossEntropyLoss(W, label_smoothing=0.1), {}, (X, PROBS)),
    ("nll", lambda nn: nn.NLLLoss(), {}, (X, IDX)),
    ("nll_weight_ignore", lambda nn: nn.NLLLoss(W, ignore_index=2), {}, (X, IDX)),
    ("nll_nd_none", lambda nn: nn.NLLLoss(reduction="none"), {}, (X3, IDX3)),
    ("bce", lambda nn: nn.BCELoss(), {}, (U, T)),
    ("bce_weight_sum", lambda nn: nn.BCELoss(W, reduction="sum"), {}, (U, T)),
    ("bce_logits", lambda nn: nn.BCEWithLogitsLoss(), {}, (Y, T)),
    (
        "bce_logits_w_pw",
        lambda nn: nn.BCEWithLogitsLoss(W, reduction="none", pos_weight=W.flip(0)),
        {},
        (Y, T),
    ),
    ("l1", lambda nn: nn.L1Loss(), {}, (X, Y)),
    ("l1_none", lambda nn: nn.L1Loss(reduction="none"), {}, (X, Y)),
    ("mse", lambda nn: nn.MSELoss(), {}, (X, Y)),
    ("mse_sum", lambda nn: nn.MSELoss(reduction="sum"), {}, (X, Y)),
    ("smooth_l1", lambda nn: nn.SmoothL1Loss(beta=0.5), {}, (X, Y)),
    ("smooth_l1_beta0", lambda nn: nn.SmoothL1Loss(beta=0.0, reduction="none"), {}, (X, Y)),
    ("huber", lambda nn: nn.HuberLoss(delta=0.7), {}, (X, Y)),
    ("huber_sum", lambda nn: nn.HuberLoss(reduction="sum"), {}, (X, Y)),
    (
        "ctc_sum",
        lambda nn: nn.CTCLoss(reduction="sum", zero_infinity=True),
        {},
        (
            X3.permute(2, 0, 1).log_softmax(2),  # (T, N, C) = (5, 4, 3)
            torch.tensor([[1, 2], [2, 2], [1, 1], [2, 1]]),
            torch.tensor([5, 5, 2, 2]),
            torch.tensor([2, 2, 2, 2]),
        ),
    ),
    ("kl_batchmean", lambda nn: nn.KLDivLoss(reduction="batchmean"), {}, (X.log_softmax(1), U)),
    ("kl_log_sum", lambda nn: nn.KLDivLoss(reduction="sum", log_target=True), {}, (X, Y)),
    ("poisson_full", lambda nn: nn.PoissonNLLLoss(full=True), {}, (X, T * 4)),
    ("poisson_rate", lambda nn: nn.PoissonNLLLoss(False, reduction="none"), {}, (U, T * 4)),
    ("ranking", lambda nn: nn.MarginRankingLoss(0.2), {}, (X, Y, torch.sign(T - 0.5))),
    ("hinge_sum", lambda nn: nn.HingeEmbeddingLoss(0.5, reduction="sum"), {}, (X, Y.sign())),
    ("soft_margin", lambda nn: nn.SoftMarginLoss(), {}, (X, Y.sign())),
    ("ml_soft_none", lambda nn: nn.MultiLabelSoftMarginLoss(W, reduction="none"), {}, (X, T)),
    (
        "ml_margin",
        lambda nn: nn.MultiLabelMarginLoss(),
        {},
        (X, torch.tensor([[0, 2, -1], [1, -1, 0], [2, 1, 0], [-1, 0, 0]])),
    ),
    ("ml_margin_1d", lambda nn: nn.MultiLabelMarginLoss(reduction="none"), {}, (X1, IDX[:3] - 1)),
    ("multi_margin", lambda nn: nn.MultiMarginLoss(p=2, margin=0.5, weight=W), {}, (X, IDX)),
    ("multi_margin_none", lambda nn: nn.MultiMarginLoss(reduction="none"), {}, (X, IDX)),
    ("cos_embedding", lambda nn: nn.CosineEmbeddingLoss(0.1), {}, (X, Y, (T[:, 0] - 0.5).sign())),
    ("triplet", lambda nn: nn.TripletMarginLoss(p=1.0, swap=True), {}, (X, Y, T)),
    ("pairwise_distance", lambda nn: nn.PairwiseDistance(keepdim=True), {}, (X, Y)),
    ("cosine_similarity", lambda nn: nn.CosineSimilarity(dim=0), {}, (X, Y)),
]

BATCHNORMS: list[Row] = [
    ("bn1d", lambda nn: nn.BatchNorm1d(3), {}, (X,)),
    ("bn1d_3d", lambda nn: nn.BatchNorm1d(3, momentum=None), {}, (X3,)),
    ("bn1d_no_affine", lambda nn: nn.BatchNorm1d(3, affine=False), {}, (X3,)),
    ("bn1d_untracked", lambda nn: nn.BatchNorm1d(3, track_running_stats=False), {}, (X,)),
    ("bn2d", lambda nn: nn.BatchNorm2d(3, momentum=0.3), {}, (X4,)),
    ("bn3d", lambda nn: nn.BatchNorm3d(3, eps=1e-3), {}, (X5,)),
    ("in1d", lambda nn: nn.InstanceNorm1d(3), {}, (X3,)),
    (
        "in1d_unbatched",
        lambda nn: nn.InstanceNorm1d(3, affine=True, track_running_stats=True),
        {},
        (X3[0],),
    ),
    (
        "in2d_tracked",
        lambda nn: nn.InstanceNorm2d(3, track_running_stats=True, momentum=0.3),
        {},
        (X4,),
    ),
    ("in3d_affine", lambda nn: nn.InstanceNorm3d(3, affine=True, eps=1e-3), {}, (X5,)),
    ("lrn", lambda nn: nn.LocalResponseNorm(2, alpha=0.5), {}, (X4,)),
    ("lrn_3d", lambda nn: nn.LocalResponseNorm(3), {}, (X3,)),
    ("ln", lambda nn: nn.LayerNorm(3), {}, (X,)),
    ("ln_2d_no_bias", lambda nn: nn.LayerNorm([3, 5], bias=False), {}, (X3,)),
    ("rms", lambda nn: nn.RMSNorm(5), {}, (X3,)),
    ("rms_no_affine", lambda nn: nn.RMSNorm([2, 2], 1e-3, elementwise_affine=False), {}, (X4,)),
    ("gn", lambda nn: nn.GroupNorm(1, 3), {}, (X4,)),
    ("gn_2d_no_affine", lambda nn: nn.GroupNorm(3, 3, affine=False), {}, (X,)),
    ("gn_3d", lambda nn: nn.GroupNorm(3, 3, eps=1e-3), {}, (X5,)),
]
if NORM_BIAS:  # (torch's batch norms take bias= from 2.12 on)
    BATCHNORMS.append(("bn2d_no_bias", lambda nn: nn.BatchNorm2d(3, bias=False), {}, (X4,)))

DROPOUTS: list[Row] = [
    ("dropout", lambda nn: nn.Dropout(0.3), {}, (X,)),
    ("dropout_p1", lambda nn: nn.Dropout(1.0), {}, (X,)),
    ("dropout_p0", lambda nn: nn.Dropout(0.0), {}, (X,)),
    ("dropout1d", lambda nn: nn.Dropout1d(0.4), {}, (X3,)),
    ("dropout1d_unbatched", lambda nn: nn.Dropout1d(0.4), {}, (X3[0],)),
    ("dropout2d", lambda nn: nn.Dropout2d(0.5), {}, (X4,)),
    ("dropout3d", lambda nn: nn.Dropout3d(0.5), {}, (X5,)),
    ("dropout3d_unbatched", lambda nn: nn.Dropout3d(0.5), {}, (X5[0],)),
    ("alpha_dropout", lambda nn: nn.AlphaDropout(0.2), {}, (X,)),
    ("feature_alpha_dropout", lambda nn: nn.FeatureAlphaDropout(0.2), {}, (X4,)),
]


def _where(name: str, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> str:
    return f"{name}: {module!r} on inputs of shapes {[tuple(t.shape) for t in inputs]}"


def _run(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], seed: int = 7) -> Any:
    torch.manual_seed(seed)
    return module(*[t.clone() for t in inputs])


def _four(make: Callable[[Any], torch.nn.Module]) -> dict[str, torch.nn.Module]:
    ours, theirs = make(R), make(torch.nn)
    assert isinstance(ours, type(theirs))
    return {
        "ours_eager": ours,
        "ours_scripted": torch.jit.script(copy.deepcopy(ours)),
        "torch_eager": theirs,
        "torch_scripted": torch.jit.script(copy.deepcopy(theirs)),
    }


@pytest.mark.parametrize("row", LOSSES, ids=[r[0] for r in LOSSES])
def test_loss_scripts_and_agrees(row: Row) -> None:
    name, make, _, inputs = row
    mods = _four(make)
    where = _where(name, mods["ours_eager"], inputs)
    ref = _run(mods["ours_eager"], inputs)
    for key in ("ours_scripted", "torch_scripted", "torch_eager"):
        torch.testing.assert_close(
            _run(mods[key], inputs), ref, msg=lambda m, k=key: f"{where}, {k}: {m}"
        )


@pytest.mark.parametrize("row", BATCHNORMS, ids=[r[0] for r in BATCHNORMS])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm_scripts_and_agrees(row: Row, training: bool) -> None:
    name, make, _, inputs = row
    mods = _four(make)
    where = _where(name, mods["ours_eager"], inputs) + (" (train)" if training else " (eval)")
    for m in mods.values():
        with torch.no_grad():  # non-trivial parameters and running statistics, same everywhere
            for i, t in enumerate(m.state_dict().values()):
                if t.is_floating_point():
                    t.copy_(torch.linspace(0.5, 1.5, t.numel()).view_as(t) + 0.1 * i)
        m.train(training)
    outs = {k: _run(m, inputs) for k, m in mods.items()}
    # a second forward: the counter and cumulative averages move on
    outs2 = {k: _run(m, inputs) for k, m in mods.items()}
    ref_state = mods["ours_eager"].state_dict()
    for key in ("ours_scripted", "torch_scripted", "torch_eager"):
        msg = lambda m, k=key: f"{where}, {k}: {m}"  # noqa: E731
        torch.testing.assert_close(outs[key], outs["ours_eager"], msg=msg)
        torch.testing.assert_close(outs2[key], outs2["ours_eager"], msg=msg)
        state = mods[key].state_dict()
        assert state.keys() == ref_state.keys(), where
        for k in ref_state:
            torch.testing.assert_close(
                state[k], ref_state[k], msg=lambda m, k=k: f"{where}, {k}: {m}"
            )


def test_batchnorm_scripted_gradients() -> None:
    mods = _four(lambda nn: nn.BatchNorm2d(3))
    grads = {}
    for key, m in mods.items():
        x = X4.clone().requires_grad_()
        (m(x) * torch.arange(X4.numel()).view_as(X4)).sum().backward()
        grads[key] = (x.grad, m.weight.grad, m.bias.grad)
    for key in ("ours_scripted", "torch_scripted"):
        torch.testing.assert_close(
            grads[key], grads["ours_eager"], msg=lambda m, k=key: f"{k}: {m}"
        )


@pytest.mark.parametrize("cls", ["LayerNorm", "RMSNorm", "GroupNorm"])
def test_norm_scripted_gradients(cls: str) -> None:
    """Scripted LayerNorm/RMSNorm/GroupNorm (the composite form) give eager's gradients."""
    args = (1, 3) if cls == "GroupNorm" else ([2, 2],)
    mods = _four(lambda nn: getattr(nn, cls)(*args))
    grads = {}
    for key, m in mods.items():
        x = X4.clone().requires_grad_()
        (m(x) * torch.arange(X4.numel()).view_as(X4)).sum().backward()
        grads[key] = (x.grad, m.weight.grad)
    for key in ("ours_scripted", "torch_scripted", "torch_eager"):
        torch.testing.assert_close(
            grads[key], grads["ours_eager"], msg=lambda m, k=key: f"{cls} {k}: {m}"
        )


@pytest.mark.parametrize("row", DROPOUTS, ids=[r[0] for r in DROPOUTS])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_dropout_scripts_and_agrees(row: Row, training: bool) -> None:
    name, make, _, inputs = row
    mods = _four(make)
    where = _where(name, mods["ours_eager"], inputs) + (" (train)" if training else " (eval)")
    for m in mods.values():
        m.train(training)
    ref = _run(mods["ours_eager"], inputs)
    for key in ("ours_scripted", "torch_scripted", "torch_eager"):
        # same seed, same draws: bit for bit on CPU
        out = _run(mods[key], inputs)
        torch.testing.assert_close(
            out, ref, rtol=0, atol=0, msg=lambda m, k=key: f"{where}, {k}: {m}"
        )


def test_scripted_module_in_a_scripted_model() -> None:
    """A scripted model holding reimpl layers and a reimpl loss: same as the eager one."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)
            self.bn = R.BatchNorm1d(3)
            self.drop = R.Dropout(0.25)
            self.loss = R.CrossEntropyLoss(label_smoothing=0.1)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.loss(self.drop(self.bn(self.lin(x))), y)

    torch.manual_seed(0)
    eager = Net()
    scripted = torch.jit.script(copy.deepcopy(eager))
    torch.testing.assert_close(_run(scripted, (X, IDX)), _run(eager, (X, IDX)))
    torch.testing.assert_close(scripted.bn.running_var, eager.bn.running_var)


def test_torch_export_with_reimpl_loss_and_batchnorm() -> None:
    """torch.export traces a model using a reimpl BatchNorm and a reimpl loss (eval)."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = R.BatchNorm1d(3)
            self.loss = R.CrossEntropyLoss(W, label_smoothing=0.1)
            self.mse = R.MSELoss()

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            h = self.bn(x)
            return self.loss(h, y) + self.mse(h, x)

    net = Net().eval()
    with torch.no_grad():
        net.bn.running_mean.fill_(0.2)
        net.bn.running_var.fill_(1.5)
    exported = torch.export.export(net, (X, IDX))
    torch.testing.assert_close(exported.module()(X, IDX), net(X, IDX))
    torch.testing.assert_close(exported.module()(Y, IDX.flip(0)), net(Y, IDX.flip(0)))


@pytest.mark.parametrize(
    ("cls", "shape"),
    [
        ("Dropout2d", (2, 3, 4)),
        ("Dropout2d", (2, 3)),
        ("Dropout3d", (2, 3, 4)),
        ("Dropout2d", (2, 3, 2, 2)),
    ],
)
def test_scripted_dropout_warns_as_torch(cls: str, shape: tuple[int, ...]) -> None:
    """Deprecated ranks give the same number of UserWarnings under TorchScript as in eager
    (and as torch's scripted and eager modules); supported ranks none."""
    x = torch.randn(shape, generator=g)
    counts = {}
    for key, m in _four(lambda nn: getattr(nn, cls)(0.5)).items():
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            _run(m, (x,))
        counts[key] = sum(w.category is UserWarning for w in rec)
    expected = 0 if len(shape) in (4, 5) else 1
    assert set(counts.values()) == {expected}, (cls, shape, counts)
