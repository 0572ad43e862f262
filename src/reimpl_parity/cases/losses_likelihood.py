"""Parity rows for the likelihood losses (``kl_div``, ``poisson_nll_loss``,
``gaussian_nll_loss``): drawn over shapes (incl. empty, 0-D and broadcasting targets),
dtypes, every reduction and the legacy ``size_average``/``reduce`` flags, the values where
the formulas have their edges (probabilities of exactly 0 and 1, counts 0 and 1 under the
Stirling term, variances below ``eps``), the same rows under ``torch.autocast``, and the
calls torch refuses (``LIKELIHOOD_ERROR_CASES``).

All three are torch composites that reimpl writes op for op, so the default tolerances hold
for every dtype (no row loosens them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as TF
from hypothesis import strategies as st

import reimpl.nn.functional as F
from reimpl_parity.cases import _autocast as autocast
from reimpl_parity.cases.loss_errors import _error_case, _ints, _t
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

#: the deprecated flags, each present or not (torch maps them to a reduction and warns)
LEGACY: dict[str, st.SearchStrategy[Any]] = {
    "size_average": st.booleans(),
    "reduce": st.booleans(),
}


def partner(draw: Draw, shape: tuple[int, ...], *, same_rank: bool = False) -> tuple[int, ...]:
    """Usually ``shape``; sometimes a shape that broadcasts against it: leading dimensions
    dropped (unless ``same_rank``) and some sides set to 1."""
    if not shape or draw(st.integers(0, 3)):
        return shape
    drop = 0 if same_rank else draw(st.integers(0, len(shape)))
    return tuple(1 if draw(st.booleans()) else s for s in shape[drop:])


# --------------------------------------------------------------------------- kl_div


@st.composite
def _kl_div_call(draw: Draw, dtype: torch.dtype) -> Call:
    shape = draw(shapes(0, 4, 0, 5))
    log_target = draw(st.booleans())
    x = draw(tensors(shape, dtype, requires_grad=True))
    t_shape = partner(draw, shape)
    grad = draw(st.booleans())
    if log_target:
        t = draw(tensors(t_shape, dtype, requires_grad=grad, regimes=("normal", "tiny")))
    else:  # probabilities, exact 0 and 1 included (0 log 0 = 0; its gradient is torch's nan)
        t = draw(tensors(t_shape, dtype, kind="unit", requires_grad=grad))
    strategies: dict[str, st.SearchStrategy[Any]] = {
        "reduction": st.sampled_from(["none", "mean", "sum", "batchmean", "elementwise_mean"]),
        "log_target": st.just(log_target),
    }
    if draw(st.integers(0, 3)) == 0:
        strategies.update(LEGACY)
    return Call((x, t), draw(optional_kwargs(strategies)), seed=draw(seeds))


# --------------------------------------------------------------------------- poisson


@st.composite
def _poisson_call(draw: Draw, dtype: torch.dtype) -> Call:
    shape = draw(shapes(0, 4, 0, 5))
    log_input = draw(st.booleans())
    if log_input:
        x = draw(tensors(shape, dtype, requires_grad=True))
    else:  # a rate: positive, but a negative one is allowed (log gives nan, as torch's)
        kind = draw(st.sampled_from(["positive", "positive", "real"]))
        x = draw(tensors(shape, dtype, kind=kind, low=0.0, high=5.0, requires_grad=True))
    # counts (0 and 1 hit the Stirling term's mask) or any non-negative value
    kind = draw(st.sampled_from(["int", "positive"]))
    t = draw(
        tensors(
            partner(draw, shape), dtype, kind=kind, low=0, high=6, requires_grad=draw(st.booleans())
        )
    )
    strategies: dict[str, st.SearchStrategy[Any]] = {
        "log_input": st.just(log_input),
        "full": st.booleans(),
        "eps": st.sampled_from([1e-8, 1e-3, 0.5]),
        "reduction": reductions,
    }
    if draw(st.integers(0, 3)) == 0:
        strategies.update(LEGACY)
    return Call((x, t), draw(optional_kwargs(strategies)), seed=draw(seeds))


# --------------------------------------------------------------------------- gaussian


def _var_shape(draw: Draw, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shapes torch accepts for var: the input's, the input's without its last
    dimension, or the input's with one dimension set to 1."""
    if not shape:
        return shape
    pick = draw(st.integers(0, 2))
    if pick == 1:
        return shape[:-1]
    if pick == 2:
        i = draw(st.integers(0, len(shape) - 1))
        return (*shape[:i], 1, *shape[i + 1 :])
    return shape


@st.composite
def _gaussian_call(draw: Draw, dtype: torch.dtype) -> Call:
    shape = draw(shapes(0, 4, 0, 5))
    x = draw(tensors(shape, dtype, requires_grad=True))
    t = draw(tensors(partner(draw, shape), dtype, requires_grad=draw(st.booleans())))
    var: TensorSpec | float
    if draw(st.integers(0, 3)) == 0:
        var = draw(st.sampled_from([1.0, 0.5, 1e-9, 0.0, 3.0]))
    else:  # some variances below eps (floored), some far above
        var = draw(
            tensors(
                _var_shape(draw, shape),
                dtype,
                kind="positive",
                low=draw(st.sampled_from([0.0, 0.1])),
                high=draw(st.sampled_from([1e-5, 2.0, 100.0])),
                requires_grad=draw(st.booleans()),
            )
        )
    strategies: dict[str, st.SearchStrategy[Any]] = {
        "full": st.booleans(),
        "eps": st.sampled_from([1e-6, 1e-2]),
        "reduction": reductions,
    }
    return Call((x, t, var), draw(optional_kwargs(strategies)), seed=draw(seeds))


PLAIN_CASES: list[Case] = [
    Case("kl_div", F.kl_div, TF.kl_div, _kl_div_call, family="losses"),
    Case(
        "poisson_nll_loss", F.poisson_nll_loss, TF.poisson_nll_loss, _poisson_call, family="losses"
    ),
    Case(
        "gaussian_nll_loss",
        F.gaussian_nll_loss,
        TF.gaussian_nll_loss,
        _gaussian_call,
        family="losses",
    ),
]

#: fp32 under CPU autocast (torch's list); gaussian_nll_loss is Python code, not listed
_FP32_ON_CPU = {"kl_div", "poisson_nll_loss"}

LIKELIHOOD_CASES: list[Case] = [*PLAIN_CASES, *autocast.loss_rows(PLAIN_CASES, _FP32_ON_CPU)]


# --------------------------------------------------------------------------- bad input

_COMPLEX = _t((3,), torch.complex64, kind="unit")

LIKELIHOOD_ERROR_CASES: list[Case] = [
    _error_case("unknown reduction", "kl_div", _t((3,)), _t((3,)), reduction="avg"),
    _error_case("integer target", "kl_div", _t((3,)), _ints((3,))),
    _error_case("integer input", "kl_div", _ints((3,)), _t((3,))),
    _error_case("bool target", "kl_div", _t((3,)), _ints((3,), torch.bool)),
    _error_case("complex target", "kl_div", _t((3,)), _COMPLEX),
    _error_case("not broadcastable", "kl_div", _t((3, 2)), _t((4,))),
    _error_case("unknown reduction", "poisson_nll_loss", _t((3,)), _t((3,)), reduction="avg"),
    _error_case(
        "elementwise_mean", "poisson_nll_loss", _t((3,)), _t((3,)), reduction="elementwise_mean"
    ),
    _error_case("not broadcastable", "poisson_nll_loss", _t((3, 2)), _t((4,))),
    _error_case("negative float var", "gaussian_nll_loss", _t((3,)), _t((3,)), -1.0),
    _error_case(
        "negative var", "gaussian_nll_loss", _t((3,)), _t((3,)), _t((3,), kind="fill", low=-1)
    ),
    _error_case("int var", "gaussian_nll_loss", _t((3,)), _t((3,)), 1),
    _error_case("var of wrong size", "gaussian_nll_loss", _t((3, 2)), _t((3, 2)), _t((2,))),
    _error_case(
        "var with two size-1 dims",
        "gaussian_nll_loss",
        _t((3, 2, 4)),
        _t((3, 2, 4)),
        _t((3, 1, 1), kind="positive", low=0.5, high=1),
    ),
    _error_case("var of another rank", "gaussian_nll_loss", _t((3, 2)), _t((3, 2)), _t((1, 3, 2))),
    _error_case(
        "unknown reduction",
        "gaussian_nll_loss",
        _t((3,)),
        _t((3,)),
        _t((3,), kind="positive", low=0.5, high=1),
        reduction="avg",
    ),
    _error_case(
        "target not broadcastable",
        "gaussian_nll_loss",
        _t((3, 2)),
        _t((4,)),
        _t((3, 2), kind="positive", low=0.5, high=1),
    ),
]

__all__ = ["LEGACY", "LIKELIHOOD_CASES", "LIKELIHOOD_ERROR_CASES", "partner"]
