"""Loss modules: torch's signatures, defaults, attributes and state_dicts, both ways."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

import reimpl.nn as rnn

PAIRS = [
    (
        rnn.CrossEntropyLoss,
        torch.nn.CrossEntropyLoss,
        {"weight": torch.rand(4), "ignore_index": 1, "label_smoothing": 0.2, "reduction": "sum"},
    ),
    (rnn.NLLLoss, torch.nn.NLLLoss, {"weight": torch.rand(4), "ignore_index": 2}),
    (rnn.BCELoss, torch.nn.BCELoss, {"weight": torch.rand(4), "reduction": "none"}),
    (
        rnn.BCEWithLogitsLoss,
        torch.nn.BCEWithLogitsLoss,
        {"weight": torch.rand(4), "pos_weight": torch.rand(4) + 0.5},
    ),
    (rnn.L1Loss, torch.nn.L1Loss, {"reduction": "sum"}),
    (rnn.MSELoss, torch.nn.MSELoss, {"reduction": "none"}),
    (rnn.SmoothL1Loss, torch.nn.SmoothL1Loss, {"beta": 0.5}),
    (rnn.HuberLoss, torch.nn.HuberLoss, {"delta": 2.0, "reduction": "sum"}),
    (rnn.KLDivLoss, torch.nn.KLDivLoss, {"reduction": "batchmean", "log_target": True}),
    (rnn.PoissonNLLLoss, torch.nn.PoissonNLLLoss, {"full": True, "eps": 1e-3}),
    (rnn.GaussianNLLLoss, torch.nn.GaussianNLLLoss, {"full": True, "reduction": "sum"}),
    (rnn.MarginRankingLoss, torch.nn.MarginRankingLoss, {"margin": 0.3}),
    (rnn.HingeEmbeddingLoss, torch.nn.HingeEmbeddingLoss, {"margin": 0.5, "reduction": "none"}),
    (rnn.SoftMarginLoss, torch.nn.SoftMarginLoss, {"reduction": "sum"}),
    (rnn.MultiLabelSoftMarginLoss, torch.nn.MultiLabelSoftMarginLoss, {"weight": torch.rand(4)}),
    (rnn.MultiLabelMarginLoss, torch.nn.MultiLabelMarginLoss, {"reduction": "none"}),
    (
        rnn.MultiMarginLoss,
        torch.nn.MultiMarginLoss,
        {"p": 2, "margin": 0.5, "weight": torch.rand(4) + 0.5},
    ),
    (rnn.CosineEmbeddingLoss, torch.nn.CosineEmbeddingLoss, {"margin": 0.2}),
    (rnn.TripletMarginLoss, torch.nn.TripletMarginLoss, {"p": 1.0, "swap": True}),
    (rnn.TripletMarginWithDistanceLoss, torch.nn.TripletMarginWithDistanceLoss, {"swap": True}),
]
IDS = [p[0].__name__ for p in PAIRS]


def _inputs(cls: type) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g)
    if cls in (rnn.CrossEntropyLoss, rnn.NLLLoss, rnn.MultiMarginLoss):
        return x, torch.tensor([0, 1, 3])
    if cls is rnn.BCELoss:
        return torch.sigmoid(x), torch.rand(3, 4, generator=g)
    signs = torch.randint(0, 2, (3, 4), generator=g) * 2.0 - 1
    three = (x, torch.randn(3, 4, generator=g), torch.rand(3, 4, generator=g) + 0.1)
    if cls in (rnn.GaussianNLLLoss, rnn.TripletMarginLoss, rnn.TripletMarginWithDistanceLoss):
        return three
    if cls is rnn.MarginRankingLoss:
        return (*three[:2], signs)
    if cls is rnn.CosineEmbeddingLoss:
        return (*three[:2], signs[:, 0])
    if cls in (rnn.HingeEmbeddingLoss, rnn.SoftMarginLoss):
        return x, signs
    if cls is rnn.MultiLabelMarginLoss:
        return x, torch.tensor([[3, 0, -1, 1], [1, -1, 2, 2], [0, 1, 2, 3]])
    return x, torch.rand(3, 4, generator=g)


#: the attributes of the likelihood and margin losses
_MORE = ("margin", "p", "eps", "swap", "full", "log_input", "log_target")


def _params(fn: object) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]  # type: ignore[arg-type]


@pytest.mark.parametrize(("ours", "theirs", "kwargs"), PAIRS, ids=IDS)
def test_signatures_match(ours: type, theirs: type, kwargs: dict) -> None:
    assert _params(ours.__init__) == _params(theirs.__init__)
    assert [n for n, _ in _params(ours.forward)] == [n for n, _ in _params(theirs.forward)]
    assert issubclass(ours, torch.nn.Module)


@pytest.mark.parametrize(("ours", "theirs", "kwargs"), PAIRS, ids=IDS)
def test_attributes_buffers_and_forward(ours: type, theirs: type, kwargs: dict) -> None:
    a, b = ours(**kwargs), theirs(**kwargs)
    for name in ("reduction", "ignore_index", "label_smoothing", "beta", "delta", *_MORE):
        assert getattr(a, name, None) == getattr(b, name, None), name
    assert list(dict(a.named_buffers())) == list(dict(b.named_buffers()))
    assert repr(a) == repr(b)
    inputs = _inputs(ours)
    torch.testing.assert_close(a(*inputs), b(*inputs))


@pytest.mark.parametrize(("ours", "theirs", "kwargs"), PAIRS, ids=IDS)
def test_state_dict_moves_both_ways(ours: type, theirs: type, kwargs: dict) -> None:
    a, b = ours(**kwargs), theirs(**kwargs)
    assert a.state_dict().keys() == b.state_dict().keys()
    # a torch checkpoint into reimpl, and back
    changed = {k: v + 1 for k, v in b.state_dict().items()}
    a.load_state_dict(changed)
    b2 = theirs(**kwargs)
    b2.load_state_dict(a.state_dict())
    for k, v in changed.items():
        torch.testing.assert_close(b2.state_dict()[k], v)
    inputs = _inputs(ours)
    b.load_state_dict(changed)
    torch.testing.assert_close(a(*inputs), b(*inputs))


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(p[0], p[1]) for p in PAIRS if "size_average" in inspect.signature(p[1].__init__).parameters],
)
@pytest.mark.parametrize(("size_average", "reduce"), [(False, None), (None, False), (True, True)])
def test_legacy_reduction_flags(ours: type, theirs: type, size_average, reduce) -> None:
    with warnings.catch_warnings(record=True) as mine:
        warnings.simplefilter("always")
        a = ours(size_average=size_average, reduce=reduce)
    with warnings.catch_warnings(record=True) as ref:
        warnings.simplefilter("always")
        b = theirs(size_average=size_average, reduce=reduce)
    assert a.reduction == b.reduction
    assert [w.category for w in mine] == [w.category for w in ref]


def test_to_device_and_dtype_moves_buffers() -> None:
    m = rnn.BCEWithLogitsLoss(pos_weight=torch.ones(3)).double()
    assert m.pos_weight is not None and m.pos_weight.dtype == torch.float64
