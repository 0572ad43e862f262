"""Parity rows for the margin and embedding losses and the distances they use: drawn over
shapes (incl. empty batches, unbatched 0-D/1-D inputs and broadcasting partners), dtypes,
margins, every reduction and the legacy flags; labels of +-1 with the odd 0 (where the
losses define a value too), class-index and class-list targets with their -1 terminators;
the same rows under ``torch.autocast``; and the calls torch refuses (``MARGIN_ERROR_CASES``).

torch has no CPU kernel for 16-bit ``multi_margin_loss`` and ``multilabel_margin_loss``:
there reimpl computes and the rows report a torch-side difference, not a comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as TF
from hypothesis import strategies as st
from torch import Tensor

import reimpl.nn.functional as F
from reimpl_parity.cases import _autocast as autocast
from reimpl_parity.cases.loss_errors import _ctor_error, _error_case, _idx, _ints, _t
from reimpl_parity.cases.losses_likelihood import LEGACY, partner
from reimpl_parity.harness import Case
from reimpl_parity.strategies import (
    Call,
    TensorSpec,
    optional_kwargs,
    reductions,
    seeds,
    shapes,
    tensors,
)

Draw = Callable[[st.SearchStrategy[Any]], Any]


def _labels(shape: tuple[int, ...], dtype: torch.dtype) -> st.SearchStrategy[TensorSpec]:
    """+-1 labels, and the odd 0 (-1, 0, 1 drawn uniformly), in a float or integer dtype."""
    return tensors(shape, dtype, kind="int", low=-1, high=2)


def _kwargs(
    draw: Draw, strategies: dict[str, st.SearchStrategy[Any]], legacy: bool = True
) -> dict[str, Any]:
    strategies = {"reduction": reductions, **strategies}
    if legacy and draw(st.integers(0, 3)) == 0:
        strategies.update(LEGACY)
    return draw(optional_kwargs(strategies))


# --------------------------------------------------------------------------- two-class


@st.composite
def _ranking_call(draw: Draw, dtype: torch.dtype) -> Call:
    shape = draw(shapes(0, 3, 0, 5))
    x1 = draw(tensors(shape, dtype, requires_grad=True))
    x2 = draw(tensors(partner(draw, shape, same_rank=True), dtype, requires_grad=True))
    y_dtype = draw(st.sampled_from([dtype, torch.int64]))
    y = draw(_labels(partner(draw, shape, same_rank=True), y_dtype))
    if y_dtype.is_floating_point and draw(st.booleans()):
        y = TensorSpec(y.shape, y.dtype, y.seed, kind="int", low=-1, high=2, requires_grad=True)
    kw = _kwargs(draw, {"margin": st.sampled_from([0.0, 0.5, 1.0, -0.3])})
    return Call((x1, x2, y), kw, seed=draw(seeds))


@st.composite
def _hinge_call(draw: Draw, dtype: torch.dtype) -> Call:
    shape = draw(shapes(0, 4, 0, 5))
    x = draw(tensors(shape, dtype, requires_grad=True))
    y = draw(_labels(partner(draw, shape), draw(st.sampled_from([dtype, torch.int64]))))
    kw = _kwargs(draw, {"margin": st.sampled_from([1.0, 0.5, 0.0, 2.0])})
    return Call((x, y), kw, seed=draw(seeds))


@st.composite
def _soft_margin_call(draw: Draw, dtype: torch.dtype) -> Call:
    shape = draw(shapes(0, 4, 0, 5))
    x = draw(tensors(shape, dtype, requires_grad=True))
    # the target broadcasts to the input (torch writes the terms into a tensor like it)
    t_shape = tuple(1 if draw(st.integers(0, 3)) == 0 else s for s in shape)
    y = draw(_labels(t_shape, draw(st.sampled_from([dtype, dtype, torch.float32]))))
    return Call((x, y), _kwargs(draw, {}), seed=draw(seeds))


@st.composite
def _cosine_embedding_call(draw: Draw, dtype: torch.dtype) -> Call:
    batched = draw(st.booleans())
    d = draw(st.integers(0, 5))
    n = draw(st.integers(0, 5))
    shape = (n, d) if batched else (d,)
    x1 = draw(tensors(shape, dtype, requires_grad=True))
    x2 = draw(tensors(partner(draw, shape, same_rank=True), dtype, requires_grad=True))
    y = draw(_labels((n,) if batched else (), draw(st.sampled_from([dtype, torch.int64]))))
    kw = _kwargs(draw, {"margin": st.sampled_from([0.0, 0.5, -0.5])})
    return Call((x1, x2, y), kw, seed=draw(seeds))


# --------------------------------------------------------------------------- multi-label, class


def _class_shape(draw: Draw) -> tuple[int, ...]:
    """(N, C), (C) or (): batched, one sample, one sample of one class."""
    rank = draw(st.sampled_from([2, 2, 1, 0]))
    c = draw(st.integers(1, 5))
    return ((draw(st.integers(0, 4)), c), (c,), ())[2 - rank]


def _no_empty_reduction(kw: dict[str, Any], n: int) -> dict[str, Any]:
    """torch leaves the reduced result of an empty batch unwritten (arbitrary memory): an
    empty batch is drawn with reduction='none' only (reimpl's 0 and nan: a unit test)."""
    if n:
        return kw
    return {**{k: v for k, v in kw.items() if k not in LEGACY}, "reduction": "none"}


@st.composite
def _multilabel_soft_call(draw: Draw, dtype: torch.dtype) -> Call:
    shape = draw(shapes(1, 3, 0, 5))
    x = draw(tensors(shape, dtype, requires_grad=True))
    y = draw(tensors(shape, dtype, kind="unit", requires_grad=draw(st.booleans())))
    w_shape = draw(st.sampled_from([shape[-1:], shape]))
    weight = tensors(w_shape, dtype, kind="positive", low=0.1, high=2.0)
    return Call((x, y), _kwargs(draw, {"weight": weight}), seed=draw(seeds))


@st.composite
def _multilabel_call(draw: Draw, dtype: torch.dtype) -> Call:
    shape = _class_shape(draw)
    c = shape[-1] if shape else 1
    x = draw(tensors(shape, dtype, requires_grad=True))
    # class indices, -1 ending each sample's list wherever it is drawn
    y = draw(tensors(shape, torch.int64, kind="int", low=-1, high=c))
    kw = _no_empty_reduction(_kwargs(draw, {}), shape[0] if len(shape) == 2 else 1)
    return Call((x, y), kw, seed=draw(seeds))


@st.composite
def _multi_margin_call(draw: Draw, dtype: torch.dtype) -> Call:
    shape = _class_shape(draw)
    c = shape[-1] if shape else 1
    n = shape[0] if len(shape) == 2 else 1
    x = draw(tensors(shape, dtype, requires_grad=True))
    y_shape = draw(st.sampled_from([(n,), ()])) if n == 1 else (n,)
    y = draw(tensors(y_shape, torch.int64, kind="int", low=0, high=c))
    kw = _kwargs(
        draw,
        {
            "p": st.sampled_from([1, 2]),
            "margin": st.sampled_from([1.0, 0.5, 0.0, 2.0]),
            "weight": tensors((c,), dtype, kind="positive", low=0.1, high=2.0),
        },
    )
    return Call((x, y), _no_empty_reduction(kw, n), seed=draw(seeds))


# --------------------------------------------------------------------------- distances, triplet

_P = st.sampled_from([2.0, 1.0, 3.0, 1.5, 0.5, float("inf")])


@st.composite
def _pairwise_call(draw: Draw, dtype: torch.dtype) -> Call:
    shape = draw(shapes(0, 3, 1, 5))
    x1 = draw(tensors(shape, dtype, requires_grad=True))
    x2 = draw(tensors(partner(draw, shape), dtype, requires_grad=draw(st.booleans())))
    kw = draw(
        optional_kwargs(
            {"p": _P, "eps": st.sampled_from([1e-6, 0.0, 0.1]), "keepdim": st.booleans()}
        )
    )
    return Call((x1, x2), kw, seed=draw(seeds))


@st.composite
def _cosine_similarity_call(draw: Draw, dtype: torch.dtype) -> Call:
    shape = draw(shapes(1, 3, 0, 5))
    x1 = draw(tensors(shape, dtype, requires_grad=True))
    x2 = draw(tensors(partner(draw, shape), dtype, requires_grad=draw(st.booleans())))
    kw = draw(
        optional_kwargs(
            {
                "dim": st.integers(-len(shape), len(shape) - 1),
                "eps": st.sampled_from([1e-8, 0.0, 0.5]),
            }
        )
    )
    return Call((x1, x2), kw, seed=draw(seeds))


def _triplet_tensors(draw: Draw, dtype: torch.dtype) -> tuple[TensorSpec, ...]:
    shape = draw(shapes(1, 3, 1, 5))
    a = draw(tensors(shape, dtype, requires_grad=True))
    rest = (
        draw(
            tensors(partner(draw, shape, same_rank=True), dtype, requires_grad=draw(st.booleans()))
        )
        for _ in range(2)
    )
    return (a, *rest)


@st.composite
def _triplet_call(draw: Draw, dtype: torch.dtype) -> Call:
    kw = _kwargs(
        draw,
        {
            "margin": st.sampled_from([1.0, 0.5, 2.0]),
            "p": _P,
            "eps": st.sampled_from([1e-6, 0.0]),
            "swap": st.booleans(),
        },
    )
    return Call(_triplet_tensors(draw, dtype), kw, seed=draw(seeds))


#: distance functions by name: each side measures with its own library's functions
_DISTANCES: dict[str, Callable[[Any], Callable[[Tensor, Tensor], Tensor]]] = {
    "pairwise": lambda ns: ns.pairwise_distance,
    "pairwise_l1": lambda ns: lambda a, b: ns.pairwise_distance(a, b, p=1.0),
    "cosine": lambda ns: lambda a, b: 1.0 - ns.cosine_similarity(a, b, dim=-1),
}


def _with_distance(ns: Any) -> Callable[..., Tensor]:
    def run(*args: Tensor, distance: str | None = None, **kwargs: Any) -> Tensor:
        fn = None if distance is None else _DISTANCES[distance](ns)
        return ns.triplet_margin_with_distance_loss(*args, distance_function=fn, **kwargs)

    return run


@st.composite
def _triplet_distance_call(draw: Draw, dtype: torch.dtype) -> Call:
    kw = _kwargs(
        draw,
        {
            "distance": st.sampled_from(list(_DISTANCES)),
            "margin": st.sampled_from([1.0, 0.5, 2.0]),
            "swap": st.booleans(),
        },
        legacy=False,
    )
    return Call(_triplet_tensors(draw, dtype), kw, seed=draw(seeds))


def _row(name: str, calls: Callable[[torch.dtype], st.SearchStrategy[Call]]) -> Case:
    return Case(name, getattr(F, name), getattr(TF, name), calls, family="losses")


PLAIN_CASES: list[Case] = [
    _row("margin_ranking_loss", _ranking_call),
    _row("hinge_embedding_loss", _hinge_call),
    _row("soft_margin_loss", _soft_margin_call),
    _row("multilabel_soft_margin_loss", _multilabel_soft_call),
    _row("multilabel_margin_loss", _multilabel_call),
    _row("multi_margin_loss", _multi_margin_call),
    _row("cosine_embedding_loss", _cosine_embedding_call),
    _row("triplet_margin_loss", _triplet_call),
    Case(
        "triplet_margin_with_distance_loss",
        _with_distance(F),
        _with_distance(TF),
        _triplet_distance_call,
        family="losses",
    ),
    _row("pairwise_distance", _pairwise_call),
    _row("cosine_similarity", _cosine_similarity_call),
]

#: fp32 under CPU autocast (torch's list); the multi-label soft margin loss, the triplet
#: loss with a distance function and the distances themselves are not listed there
_FP32_ON_CPU = {
    "margin_ranking_loss",
    "hinge_embedding_loss",
    "soft_margin_loss",
    "multilabel_margin_loss",
    "multi_margin_loss",
    "cosine_embedding_loss",
    "triplet_margin_loss",
}

MARGIN_CASES: list[Case] = [*PLAIN_CASES, *autocast.loss_rows(PLAIN_CASES, _FP32_ON_CPU)]


# --------------------------------------------------------------------------- bad input

MARGIN_ERROR_CASES: list[Case] = [
    _error_case("dims differ", "margin_ranking_loss", _t((3, 2)), _t((2,)), _t((3, 2))),
    _error_case(
        "unknown reduction", "margin_ranking_loss", _t((3,)), _t((3,)), _t((3,)), reduction="x"
    ),
    _error_case("not broadcastable", "margin_ranking_loss", _t((3,)), _t((4,)), _t((3,))),
    _error_case("bool target", "margin_ranking_loss", _t((3,)), _t((3,)), _ints((3,), torch.bool)),
    _error_case("unknown reduction", "hinge_embedding_loss", _t((3,)), _ints((3,)), reduction="x"),
    _error_case("integer input", "hinge_embedding_loss", _ints((3,)), _ints((3,))),
    _error_case("not broadcastable", "hinge_embedding_loss", _t((3,)), _t((4,))),
    _error_case("target grows the input", "soft_margin_loss", _t((2,)), _t((3, 2))),
    _error_case("integer input", "soft_margin_loss", _ints((3,)), _t((3,))),
    _error_case("target requires grad", "soft_margin_loss", _t((3,)), _t((3,), requires_grad=True)),
    _error_case("unknown reduction", "soft_margin_loss", _t((3,)), _t((3,)), reduction="x"),
    _error_case("0-D input", "multilabel_soft_margin_loss", _t(()), _t(())),
    _error_case(
        "unknown reduction", "multilabel_soft_margin_loss", _t((2, 3)), _t((2, 3)), reduction="x"
    ),
    _error_case(
        "elementwise_mean",
        "multilabel_soft_margin_loss",
        _t((2, 3)),
        _t((2, 3)),
        reduction="elementwise_mean",
    ),
    _error_case(
        "weight not broadcastable",
        "multilabel_soft_margin_loss",
        _t((2, 3)),
        _t((2, 3)),
        weight=_t((2,)),
    ),
    _error_case("3-D input", "multilabel_margin_loss", _t((2, 3, 1)), _idx(0, (2, 3, 1))),
    _error_case("no classes", "multilabel_margin_loss", _t((2, 0)), _idx(0, (2, 0))),
    _error_case("target of other size", "multilabel_margin_loss", _t((2, 3)), _idx(0, (3,))),
    _error_case("target too large", "multilabel_margin_loss", _t((2, 3)), _idx(3, (2, 3))),
    _error_case("target below -1", "multilabel_margin_loss", _t((2, 3)), _idx(-2, (2, 3))),
    _error_case("int32 target", "multilabel_margin_loss", _t((2, 3)), _idx(0, (2, 3), torch.int32)),
    _error_case("float target", "multilabel_margin_loss", _t((2, 3)), _t((2, 3))),
    _error_case("integer input", "multilabel_margin_loss", _ints((2, 3)), _idx(0, (2, 3))),
    _error_case("p = 3", "multi_margin_loss", _t((2, 3)), _idx(0, 2), p=3),
    _error_case("2-D weight", "multi_margin_loss", _t((2, 3)), _idx(0, 2), weight=_t((1, 3))),
    _error_case(
        "weight of other size", "multi_margin_loss", _t((2, 3)), _idx(0, 2), weight=_t((4,))
    ),
    _error_case(
        "float64 weight",
        "multi_margin_loss",
        _t((2, 3)),
        _idx(0, 2),
        weight=_t((3,), torch.float64),
    ),
    _error_case(
        "weight requires grad",
        "multi_margin_loss",
        _t((2, 3)),
        _idx(0, 2),
        weight=_t((3,), requires_grad=True),
    ),
    _error_case("3-D input", "multi_margin_loss", _t((2, 3, 1)), _idx(0, 2)),
    _error_case("no classes", "multi_margin_loss", _t((2, 0)), _idx(0, 2)),
    _error_case("2-D target", "multi_margin_loss", _t((2, 3)), _idx(0, (2, 1))),
    _error_case("target of other size", "multi_margin_loss", _t((2, 3)), _idx(0, 3)),
    _error_case("target out of range", "multi_margin_loss", _t((2, 3)), _idx(3, 2)),
    _error_case("negative target", "multi_margin_loss", _t((2, 3)), _idx(-1, 2)),
    _error_case("int32 target", "multi_margin_loss", _t((2, 3)), _idx(0, 2, torch.int32)),
    _error_case("integer input", "multi_margin_loss", _ints((2, 3)), _idx(0, 2)),
    _error_case("unknown reduction", "multi_margin_loss", _t((2, 3)), _idx(0, 2), reduction="x"),
    _error_case("2-D target", "cosine_embedding_loss", _t((3, 2)), _t((3, 2)), _t((3, 1))),
    _error_case("1-D target, 1-D inputs", "cosine_embedding_loss", _t((3,)), _t((3,)), _t((3,))),
    _error_case("0-D target, 2-D inputs", "cosine_embedding_loss", _t((3, 2)), _t((3, 2)), _t(())),
    _error_case("inputs of other ranks", "cosine_embedding_loss", _t((3, 2)), _t((2,)), _t((3,))),
    _error_case(
        "unknown reduction",
        "cosine_embedding_loss",
        _t((3, 2)),
        _t((3, 2)),
        _t((3,)),
        reduction="x",
    ),
    _error_case(
        "zero margin", "triplet_margin_loss", _t((3, 2)), _t((3, 2)), _t((3, 2)), margin=0.0
    ),
    _error_case("dims differ", "triplet_margin_loss", _t((3, 2)), _t((3, 2)), _t((2,))),
    _error_case(
        "unknown reduction",
        "triplet_margin_loss",
        _t((3, 2)),
        _t((3, 2)),
        _t((3, 2)),
        reduction="x",
    ),
    _error_case(
        "negative margin",
        "triplet_margin_with_distance_loss",
        _t((3, 2)),
        _t((3, 2)),
        _t((3, 2)),
        margin=-1.0,
    ),
    _error_case(
        "dims differ", "triplet_margin_with_distance_loss", _t((3, 2)), _t((3, 2)), _t((2,))
    ),
    _error_case(
        "elementwise_mean",
        "triplet_margin_with_distance_loss",
        _t((3, 2)),
        _t((3, 2)),
        _t((3, 2)),
        reduction="elementwise_mean",
    ),
    _error_case("not broadcastable", "pairwise_distance", _t((3, 2)), _t((4,))),
    _error_case("negative p, empty", "pairwise_distance", _t((3, 0)), _t((3, 0)), p=-1.0),
    _error_case("integer inputs", "cosine_similarity", _ints((3, 2)), _ints((3, 2))),
    _error_case("negative eps", "cosine_similarity", _t((3, 2)), _t((3, 2)), eps=-1.0),
    _error_case("dim out of range", "cosine_similarity", _t((3, 2)), _t((3, 2)), dim=2),
    _error_case("not broadcastable", "cosine_similarity", _t((3, 2)), _t((3,)), dim=-1),
    _ctor_error("p = 3", "MultiMarginLoss", p=3),
    _ctor_error("2-D weight", "MultiMarginLoss", weight=torch.ones(1, 3)),
    _ctor_error("zero margin", "TripletMarginLoss", margin=0.0),
    _ctor_error("negative margin", "TripletMarginWithDistanceLoss", margin=-0.5),
]

__all__ = ["MARGIN_CASES", "MARGIN_ERROR_CASES"]
