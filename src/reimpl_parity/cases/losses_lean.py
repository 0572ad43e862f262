"""Parity rows for the output-layer losses over large label sets: ``linear_cross_entropy``
(chunked; torch >= 2.13 is its oracle) and ``AdaptiveLogSoftmaxWithLoss`` (forward,
``log_prob``, ``predict``), their autocast rows, and their bad input.

On a torch without ``linear_cross_entropy`` (2.12) its value rows stay in the table but
report "torch-side" (no oracle, nothing compared) and its bad-input rows are left out.
The adaptive softmax rows run the module through ``torch.func.functional_call`` with the
drawn parameters, so its parameter gradients are compared as the input's are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as TF
from hypothesis import strategies as st
from torch import Tensor
from torch.func import functional_call

import reimpl.nn as RN
import reimpl.nn.functional as F
from reimpl_parity.cases import _autocast as autocast
from reimpl_parity.cases.loss_errors import _idx, _t
from reimpl_parity.harness import Case, fixed_call_case
from reimpl_parity.strategies import REGIMES, Call, optional_kwargs, reductions, seeds, tensors

Draw = Callable[[st.SearchStrategy[Any]], Any]

#: torch's oracle for linear_cross_entropy, None before torch 2.13
TORCH_LCE: Callable[..., Tensor] | None = getattr(TF, "linear_cross_entropy", None)
TORCH_LCE_OPTIONS: type | None = getattr(torch.nn, "LinearCrossEntropyOptions", None)


def _torch_lce(*args: Any, **kwargs: Any) -> Tensor:
    if TORCH_LCE is None:
        # read by the harness as a gap of this torch ("not implemented for"): torch-side
        raise NotImplementedError(
            f"linear_cross_entropy is not implemented for torch {torch.__version__} "
            "(it arrived in 2.13): no oracle"
        )
    return TORCH_LCE(*args, **kwargs)


# ------------------------------------------------------------------ linear_cross_entropy


@st.composite
def _lce_call(
    draw: Draw, dtype: torch.dtype, *, with_options: bool = True, math16: bool = False
) -> Call:
    """(input, linear_weight, target) with class indices or probabilities, 1-D or 2-D
    input, sometimes K-dimensional (``out_features``), sometimes ``options`` (then torch's
    chunked path is the oracle; batch_chunk_size 1-3 chunks ours as finely). ``math16``:
    the linear runs in 16 bits whatever ``dtype`` is (autocast)."""
    # Calls with options stay clear of torch's chunked path's own differences (all torch's,
    # ours follows its reference path): it warns that it falls back with label smoothing
    # (ours chunks; tests/unit/test_linear_cross_entropy.py), gives 'mean' over all-ignored
    # rows a nan gradient (its reference 0), rounds d(loss)/d(logits) at |x| ~ 1e4 less
    # finely than float32's atol, and its default chunk size divides by in_features
    # (ZeroDivisionError for 0).
    chunked = with_options and TORCH_LCE_OPTIONS is not None and draw(st.booleans())
    batched = draw(st.integers(0, 5)) > 0
    n = draw(st.integers(0, 6)) if batched else None
    d = draw(st.sampled_from([0, 1, 2, 3, 5, 8]))
    c = draw(st.integers(1, 9))
    out_features: tuple[int, ...] = ()
    if batched and draw(st.integers(0, 4)) == 0:
        out_features = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    batch = () if n is None else (n,)
    logits_shape = (*batch, c, *out_features)
    # no 'large' inputs (~1e4) where the logits are 16-bit: one ulp there is up to 8, so a
    # one-ulp difference in rounding (any two correct matmuls may differ so) moves the
    # softmax by a factor up to e^8, and no tolerance tells right from wrong (a dev-profile
    # draw under CPU autocast fp16 was 3% off on a weight gradient, with or without our C
    # cross-entropy rows)
    regimes = ("normal", "tiny") if dtype.itemsize == 2 or math16 or chunked else REGIMES
    x = draw(tensors((*batch, d), dtype, requires_grad=True, regimes=regimes))
    w = draw(
        tensors(
            (c, *out_features, d),
            dtype,
            requires_grad=draw(st.integers(0, 3)) > 0,
            regimes=("normal",),
            layouts=("contiguous", "transposed") if not out_features else ("contiguous",),
        )
    )
    kw: dict[str, Any] = {}
    if draw(st.integers(0, 4)) == 0:  # class probabilities
        t = draw(tensors(logits_shape, dtype, kind="unit", requires_grad=draw(st.booleans())))
    else:
        # uint8 only without out_features: torch's spatial backward refuses them (a torch
        # bug; the cross_entropy rows draw the same)
        t_dtypes = [torch.int64] * 4 + ([] if out_features else [torch.uint8])
        t = draw(
            tensors(
                (*batch, *out_features), draw(st.sampled_from(t_dtypes)), kind="int", low=0, high=c
            )
        )
        ignore = [-100] if chunked else [-100, 0, c - 1]
        kw.update(draw(optional_kwargs({"ignore_index": st.sampled_from(ignore)})))
    strategies: dict[str, st.SearchStrategy[Any]] = {
        "linear_bias": tensors((c, *out_features), dtype, requires_grad=draw(st.booleans())),
        "weight": tensors((c,), dtype, kind="positive", low=0.1, high=2.0, layouts=("contiguous",)),
        "reduction": reductions,
    }
    if not chunked:
        strategies["label_smoothing"] = st.sampled_from([0.0, 0.1, 0.5, 1.0, -0.1])
    kw.update(draw(optional_kwargs(strategies)))
    if chunked:
        size = draw(st.sampled_from([1, 2, 3] if d == 0 else [None, 1, 2, 3]))
        kw["options"] = TORCH_LCE_OPTIONS(batch_chunk_size=size)  # type: ignore[misc]
    return Call((x, w, t), kw, seed=draw(seeds))


# 16-bit: torch rounds the log-probabilities and d(loss)/d(logits) to 16 bits, ours keeps
# the cross-entropy in float32 (and is the closer of the two to the float64 result on the
# same 16-bit inputs: tests/unit/test_linear_cross_entropy.py measures both); the gap is
# up to ~2% of the largest element in bfloat16, 0.2% in float16.
_LCE_16 = {torch.float16: (4e-3, 4e-3), torch.bfloat16: (4e-2, 4e-2)}
_LCE_WHY = (
    "16-bit: torch rounds log-probabilities and their gradient to 16 bits; ours keeps float32"
)

LCE_CASE = Case(
    "linear_cross_entropy",
    F.linear_cross_entropy,
    _torch_lce,
    _lce_call,
    family="losses",
    tol=_LCE_16,
    why=_LCE_WHY,
)


def _lce_autocast_rows() -> list[Case]:
    """Under autocast the linear runs in autocast's dtype whatever the inputs' dtype, so
    that dtype's tolerance (as the 16-bit row) holds for every drawn input dtype. No
    ``options``: torch's chunked op ignores autocast (it computes in the inputs' dtypes),
    ours applies autocast's policy as torch's reference path does."""
    plain = dataclasses.replace(
        LCE_CASE, inputs=lambda dt: _lce_call(dt, with_options=False, math16=True)
    )
    rows = []
    for device, dtype in autocast.RUNS:
        # a 16-bit input's gradient is also rounded to its own dtype: the looser of the two
        tol = {dt: max(_LCE_16[dtype], _LCE_16.get(dt, (0.0, 0.0))) for dt in autocast.INPUT_DTYPES}
        why = (
            f"the linear runs in {dtype} under autocast, gradients land in the input's dtype; "
            + _LCE_WHY
        )
        rows.append(autocast.autocast_case(plain, device, dtype, tol=tol, why=why))
    return rows


# ------------------------------------------------------------------ adaptive softmax


def _adaptive_shapes(
    in_features: int, cutoffs: list[int], n_classes: int, div_value: float, head_bias: bool
) -> list[tuple[int, ...]]:
    """Parameter shapes in ``named_parameters`` order (head, then each cluster's two)."""
    bounds = [*cutoffs, n_classes]
    head = len(cutoffs) + cutoffs[0]
    out: list[tuple[int, ...]] = [(head, in_features)] + ([(head,)] if head_bias else [])
    for i in range(len(cutoffs)):
        hidden = int(in_features // (div_value ** (i + 1)))
        out += [(hidden, in_features), (bounds[i + 1] - bounds[i], hidden)]
    return out


@st.composite
def _adaptive_call(draw: Draw, dtype: torch.dtype, *, batched_only: bool = False) -> Call:
    """(input, target, *parameters) and the construction arguments as keywords."""
    in_features = draw(st.integers(1, 8))
    n_classes = draw(st.integers(2, 12))
    cutoffs = sorted(
        draw(st.sets(st.integers(1, n_classes - 1), min_size=1, max_size=min(3, n_classes - 1)))
    )
    div_value = draw(st.sampled_from([1.0, 2.0, 4.0]))
    head_bias = draw(st.booleans())
    batched = batched_only or draw(st.integers(0, 4)) > 0
    batch = (draw(st.integers(0, 6)),) if batched else ()
    x = draw(tensors((*batch, in_features), dtype, requires_grad=True, regimes=("normal", "tiny")))
    t = draw(tensors(batch, torch.int64, kind="int", low=0, high=n_classes))
    params = [
        draw(
            tensors(shape, dtype, requires_grad=True, regimes=("normal",), layouts=("contiguous",))
        )
        for shape in _adaptive_shapes(in_features, cutoffs, n_classes, div_value, head_bias)
    ]
    kw = {
        "in_features": in_features,
        "n_classes": n_classes,
        "cutoffs": cutoffs,
        "div_value": div_value,
        "head_bias": head_bias,
    }
    return Call((x, t, *params), kw, seed=draw(seeds))


class _Method(torch.nn.Module):
    """``inner.<method>`` as a module's forward, for ``functional_call`` (which runs
    ``forward`` only)."""

    def __init__(self, inner: torch.nn.Module, method: str) -> None:
        super().__init__()
        self.inner = inner
        self.method = method

    def forward(self, *args: Tensor) -> Any:
        return getattr(self.inner, self.method)(*args)


def _adaptive(ns: Any, method: str) -> Callable[..., Tensor]:
    """``method`` of ``ns.AdaptiveLogSoftmaxWithLoss`` built from the keywords, run with the
    given parameters (so their gradients are compared); ``forward``'s (output, loss) comes
    back as one tensor, output then loss."""

    def run(x: Tensor, t: Tensor, *params: Tensor, **ctor: Any) -> Tensor:
        module = ns.AdaptiveLogSoftmaxWithLoss(**ctor, device=x.device, dtype=x.dtype)
        state = {
            f"inner.{name}": p
            for (name, _), p in zip(module.named_parameters(), params, strict=True)
        }
        if method == "forward":
            out = functional_call(_Method(module, method), state, (x, t))
            with torch.autocast(x.device.type, enabled=False):  # cat: no autocast policy
                return torch.cat([out.output.reshape(-1), out.loss.reshape(1)])
        result: Tensor = functional_call(_Method(module, method), state, (x,))
        return result

    return run


def _adaptive_case(method: str, *, batched_only: bool, backward: bool = True) -> Case:
    return Case(
        f"AdaptiveLogSoftmaxWithLoss.{method}",
        _adaptive(RN, method),
        _adaptive(torch.nn, method),
        lambda dt: _adaptive_call(dt, batched_only=batched_only),
        family="losses",
        backward=backward,
    )


ADAPTIVE_CASES: list[Case] = [
    _adaptive_case("forward", batched_only=False),
    _adaptive_case("log_prob", batched_only=True),
    # the head's cluster logits win for about n_clusters / head_size of the rows: the
    # tail path (all rows, some rows) is drawn often
    _adaptive_case("predict", batched_only=True, backward=False),
]


LEAN_CASES: list[Case] = [
    LCE_CASE,
    *_lce_autocast_rows(),
    *ADAPTIVE_CASES,
    *autocast.loss_rows(ADAPTIVE_CASES, fp32_on_cpu=set()),  # the Linear layers' policy
]

# --------------------------------------------------------------------------- bad input


def _error_row(
    name: str, ours: Callable[..., Any], theirs: Callable[..., Any], *args: Any, **kwargs: Any
) -> Case:
    return fixed_call_case(name, ours, theirs, "loss-errors", *args, **kwargs)


def _lce_error(name: str, *args: Any, **kwargs: Any) -> Case:
    return _error_row(
        f"linear_cross_entropy:{name}", F.linear_cross_entropy, _torch_lce, *args, **kwargs
    )


def _seeded(ns: Any, cls: str, method: str = "__call__", **ctor: Any) -> Callable[..., Any]:
    """``ns.<cls>(**ctor).<method>(*args)``, built from the same seed on both sides (a
    construction torch refuses: compared by the exception)."""

    def run(*args: Any) -> Any:
        torch.manual_seed(0)
        module = getattr(ns, cls)(**ctor)
        if method == "repr":
            return repr(module)
        return getattr(module, method)(*args)

    return run


def _ctor_error(name: str, cls: str, **ctor: Any) -> Case:
    return _error_row(
        f"{cls}():{name}", _seeded(RN, cls, "repr", **ctor), _seeded(torch.nn, cls, "repr", **ctor)
    )


def _adaptive_error(name: str, method: str, *args: Any) -> Case:
    ctor = {"in_features": 4, "n_classes": 8, "cutoffs": [2, 5], "div_value": 2.0}
    return _error_row(
        f"AdaptiveLogSoftmaxWithLoss.{method}:{name}",
        _seeded(RN, "AdaptiveLogSoftmaxWithLoss", method, **ctor),
        _seeded(torch.nn, "AdaptiveLogSoftmaxWithLoss", method, **ctor),
        *args,
    )


_X, _W = _t((3, 4)), _t((5, 4))
_LCE_ERRORS: list[Case] = [
    _lce_error("3-D input", _t((2, 3, 4)), _W, _idx(1, (2, 3))),
    _lce_error("1-D linear_weight", _X, _t((4,)), _idx(1, 3)),
    _lce_error("in_features differ", _X, _t((5, 3)), _idx(1, 3)),
    _lce_error("linear_bias shape", _X, _W, _idx(1, 3), linear_bias=_t((4,))),
    _lce_error("K-dim, unbatched input", _t((4,)), _t((5, 2, 4)), _idx(1, (2,))),
    _lce_error(
        "ignore_index with probabilities", _X, _W, _t((3, 5), kind="unit"), ignore_index=-100
    ),
    _lce_error("label_smoothing > 1", _X, _W, _idx(1, 3), label_smoothing=1.5),
    _lce_error(
        "label_smoothing > 1, probabilities", _X, _W, _t((3, 5), kind="unit"), label_smoothing=1.5
    ),
    _lce_error("unknown reduction", _X, _W, _idx(1, 3), reduction="avg"),
    _lce_error("unknown reduction, K-dim", _X, _t((5, 2, 4)), _idx(1, (3, 2)), reduction="avg"),
    _lce_error("linear_weight dtype", _X, _t((5, 4), torch.float64), _idx(1, 3)),
    _lce_error("linear_bias dtype", _X, _W, _idx(1, 3), linear_bias=_t((5,), torch.float64)),
    _lce_error("int32 target", _X, _W, _idx(1, 3, torch.int32)),
    _lce_error("target out of range", _X, _W, _idx(5, 3)),
    _lce_error("negative target", _X, _W, _idx(-1, 3)),
    _lce_error("unbatched, target out of range", _t((4,)), _W, _idx(7, ())),
    _lce_error("weight of wrong size", _X, _W, _idx(1, 3), weight=_t((4,))),
    _lce_error("weight dtype", _X, _W, _idx(1, 3), weight=_t((5,), torch.float64)),
    _lce_error("weight requires grad", _X, _W, _idx(1, 3), weight=_t((5,), requires_grad=True)),
    _lce_error("batch mismatch", _X, _W, _idx(1, 2)),
    _lce_error("2-D target", _X, _W, _idx(1, (3, 1))),
    _lce_error("unbatched input, 2 targets", _t((4,)), _W, _idx(1, 2)),
    _lce_error(
        "integer input",
        _t((3, 4), torch.int64, kind="int", high=3),
        _t((5, 4), torch.int64, kind="int", high=3),
        _idx(1, 3),
    ),
    _lce_error("no classes", _X, _t((0, 4)), _idx(0, 3)),
    _ctor_error(
        "weight of wrong size",
        "LinearCrossEntropyLoss",
        in_features=4,
        num_classes=5,
        weight=torch.ones(4),
    ),
    _ctor_error(
        "label_smoothing > 1",
        "LinearCrossEntropyLoss",
        in_features=4,
        num_classes=5,
        label_smoothing=1.5,
    ),
    _ctor_error(
        "negative label_smoothing",
        "LinearCrossEntropyLoss",
        in_features=4,
        num_classes=5,
        label_smoothing=-0.1,
    ),
]

_ADAPTIVE = "AdaptiveLogSoftmaxWithLoss"
_ADAPTIVE_ERRORS: list[Case] = [
    _ctor_error("no cutoffs", _ADAPTIVE, in_features=4, n_classes=8, cutoffs=[]),
    _ctor_error("unsorted cutoffs", _ADAPTIVE, in_features=4, n_classes=8, cutoffs=[5, 2]),
    _ctor_error("repeated cutoff", _ADAPTIVE, in_features=4, n_classes=8, cutoffs=[2, 2, 5]),
    _ctor_error("zero cutoff", _ADAPTIVE, in_features=4, n_classes=8, cutoffs=[0, 5]),
    _ctor_error("cutoff = n_classes", _ADAPTIVE, in_features=4, n_classes=8, cutoffs=[2, 8]),
    _ctor_error("fractional cutoff", _ADAPTIVE, in_features=4, n_classes=8, cutoffs=[2, 4.5]),
    _adaptive_error("batch mismatch", "__call__", _t((3, 4)), _idx(1, 2)),
    _adaptive_error("1-D target, 1-D input", "__call__", _t((4,)), _idx(1, 4)),
    _adaptive_error("0-D target, 2-D input", "__call__", _t((3, 4)), _idx(1, ())),
    _adaptive_error("2-D target", "__call__", _t((3, 4)), _idx(1, (3, 1))),
    _adaptive_error("target out of range", "__call__", _t((3, 4)), _idx(8, 3)),
    _adaptive_error("negative target", "__call__", _t((3, 4)), _idx(-1, 3)),
    _adaptive_error("in_features differ", "__call__", _t((3, 5)), _idx(1, 3)),
    _adaptive_error("1-D input", "log_prob", _t((4,))),
    _adaptive_error("1-D input", "predict", _t((4,))),
]

#: bad input; linear_cross_entropy's only where torch has it to compare with
LEAN_ERROR_CASES: list[Case] = [*(_LCE_ERRORS if TORCH_LCE is not None else []), *_ADAPTIVE_ERRORS]
