"""Parity rows for the CTC loss (``ctc_loss``): drawn over input lengths T, batch sizes N
(and the unbatched ``(T, C)`` form), class counts C, target lengths (0 included, longer
than the input included: an impossible alignment, inf or 0 with ``zero_infinity``), labels
from narrow alphabets so that repeated labels -- which need a blank between them -- are
common, both target layouts (padded ``(N, S)``, concatenated), lengths as int64/int32
tensors, tuples or lists, every reduction, ``blank`` at either end of the classes; the loss
and torch's gradient with respect to ``log_probs`` (raw values, and log-softmax outputs as
a model gives them); the same rows under ``torch.autocast``; and the calls torch refuses
(``CTC_ERROR_CASES``).

torch's CTC kernels exist for float32 and float64: the 16-bit rows check that reimpl
refuses them as torch does (NotImplementedError).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as TF
from hypothesis import strategies as st

import reimpl.nn.functional as F
from reimpl_parity.cases import _autocast as autocast
from reimpl_parity.cases.loss_errors import _error_case, _t
from reimpl_parity.compare import TOLERANCES
from reimpl_parity.harness import Case
from reimpl_parity.strategies import Call, TensorSpec, optional_kwargs, reductions, seeds, tensors

Draw = Callable[[st.SearchStrategy[Any]], Any]


def _lengths(draw: Draw, values: list[int], batched: bool) -> Any:
    """``values`` as an int64/int32 tensor (0-D for an unbatched call, sometimes), a tuple
    or a list. Tensors go into the call as they are: both sides only read them."""
    kind = draw(st.sampled_from(["int64", "int32", "tuple", "list"]))
    if kind == "tuple":
        return tuple(values)
    if kind == "list":
        return list(values)
    t = torch.tensor(values, dtype=torch.int64 if kind == "int64" else torch.int32)
    return t.reshape(()) if not batched and draw(st.booleans()) else t


@st.composite
def _ctc_call(draw: Draw, dtype: torch.dtype) -> Call:
    t = draw(st.integers(1, 8))
    c = draw(st.integers(2, 6))
    batched = draw(st.integers(0, 4)) > 0
    n = draw(st.integers(1, 4)) if batched else 1
    blank = draw(st.sampled_from([None, 0, c - 1]))  # None: left to its default, 0
    b = 0 if blank is None else blank
    # labels avoid the blank; a narrow alphabet repeats labels, which then need a blank
    # between them (two equal labels cannot be adjacent in an alignment)
    low = 1 if b == 0 else 0
    high = low + draw(st.integers(1, c - 1))
    s_max = draw(st.integers(0, 6))
    tl = [draw(st.integers(0, s_max)) for _ in range(n)]
    # mostly the full input; shorter ones, 0, and ones too short for their target
    il = [draw(st.sampled_from([t, t, draw(st.integers(0, t))])) for _ in range(n)]
    if draw(st.booleans()):  # padded (N, S); the padding holds labels too, never read
        tshape: tuple[int, ...] = (n, s_max)
    else:  # concatenated, sum(target_lengths) labels (unbatched: the target itself)
        tshape = (sum(tl),)
    t_dtype = draw(st.sampled_from([torch.int64, torch.int64, torch.int32]))
    # torch misreads non-contiguous concatenated int64 targets (it steps by their stride
    # within a sample but not between samples: a torch bug; reimpl reads the labels given,
    # tested in tests/unit/test_ctc_loss.py), so those stay contiguous here
    layouts = ("contiguous", "transposed", "strided") if len(tshape) == 2 else ("contiguous",)
    targets = draw(tensors(tshape, t_dtype, kind="int", low=low, high=high, layouts=layouts))
    shape = (t, n, c) if batched else (t, c)
    log_probs = draw(tensors(shape, dtype, requires_grad=True))
    kw = draw(optional_kwargs({"reduction": reductions, "zero_infinity": st.booleans()}))
    if blank is not None:
        kw["blank"] = blank
    args = (log_probs, targets, _lengths(draw, il, batched), _lengths(draw, tl, batched))
    return Call(args, kw, seed=draw(seeds))


def _normalized(fn: Callable[..., Any], log_softmax: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` on the log-softmax of raw scores, as a model hands CTC its outputs."""

    def call(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return fn(log_softmax(x, -1), *args, **kwargs)

    return call


PLAIN_CASES: list[Case] = [
    Case("ctc_loss", F.ctc_loss, TF.ctc_loss, _ctc_call, family="losses"),
    Case(
        "ctc_loss[log_softmax]",
        _normalized(F.ctc_loss, F.log_softmax),
        _normalized(TF.ctc_loss, TF.log_softmax),
        _ctc_call,
        family="losses",
    ),
]


def _autocast_rows(plain: list[Case]) -> list[Case]:
    """CPU autocast runs ctc_loss in float32 (torch's CPU fp32 list); CUDA autocast does
    not list it: float32 stays float32 and 16-bit inputs are refused, as without it."""
    why = "ctc_loss computes in float32 under autocast (CPU: the fp32 policy; CUDA: as given)"
    tol = {dt: TOLERANCES[torch.float32] for dt in autocast.INPUT_DTYPES}
    return [
        autocast.autocast_case(case, device, dtype, tol=tol, why=why)
        for case in plain[:1]
        for device, dtype in autocast.RUNS
    ]


CTC_CASES: list[Case] = [*PLAIN_CASES, *_autocast_rows(PLAIN_CASES)]


# --------------------------------------------------------------------------- bad input


def _lp(shape: tuple[int, ...] = (4, 2, 3), dtype: torch.dtype = torch.float32) -> TensorSpec:
    return _t(shape, dtype)


def _labels(shape: tuple[int, ...], dtype: torch.dtype = torch.int64) -> TensorSpec:
    return _t(shape, dtype, kind="int", low=1, high=3)


_IL, _TL = torch.tensor([4, 3]), torch.tensor([2, 1])


def _ctc_error(name: str, *args: Any, **kwargs: Any) -> Case:
    return _error_case(name, "ctc_loss", *args, **kwargs)


CTC_ERROR_CASES: list[Case] = [
    _ctc_error("unknown reduction", _lp(), _labels((2, 2)), _IL, _TL, reduction="avg"),
    _ctc_error("float input_lengths", _lp(), _labels((2, 2)), _IL.float(), _TL),
    _ctc_error("bool target_lengths", _lp(), _labels((2, 2)), _IL, _TL.bool()),
    _ctc_error("tensor and tuple lengths", _lp(), _labels((2, 2)), _IL, (2, 1)),
    _ctc_error("int lengths", _lp((4, 3)), _labels((2,)), 4, 2),
    _ctc_error("float tuple lengths", _lp(), _labels((2, 2)), (4.0, 3.0), (2, 1)),
    _ctc_error("bool tuple lengths", _lp(), _labels((2, 2)), (True, True), (1, 1)),
    _ctc_error("float16 log_probs", _lp(dtype=torch.float16), _labels((2, 2)), _IL, _TL),
    _ctc_error("bfloat16 log_probs", _lp(dtype=torch.bfloat16), _labels((2, 2)), _IL, _TL),
    _ctc_error("int64 log_probs", _labels((4, 2, 3)), _labels((2, 2)), _IL, _TL),
    _ctc_error("complex log_probs", _lp(dtype=torch.complex64), _labels((2, 2)), _IL, _TL),
    _ctc_error("0-D log_probs", _lp(()), _labels((1,)), (1,), (1,)),
    _ctc_error("1-D log_probs", _lp((4,)), _labels((1,)), (1,), (1,)),
    _ctc_error("4-D log_probs", _lp((4, 2, 3, 1)), _labels((2, 2)), _IL, _TL),
    _ctc_error("empty log_probs", _lp((0, 2, 3)), _labels((2, 2)), (0, 0), (0, 0)),
    _ctc_error("no classes", _lp((4, 2, 0)), _labels((2, 2)), _IL, _TL),
    _ctc_error("0-D targets", _lp(), _labels(()), _IL, _TL),
    _ctc_error("3-D targets", _lp(), _labels((2, 2, 1)), _IL, _TL),
    _ctc_error("blank = C", _lp(), _labels((2, 2)), _IL, _TL, blank=3),
    _ctc_error("negative blank", _lp(), _labels((2, 2)), _IL, _TL, blank=-1),
    _ctc_error("input_lengths of wrong size", _lp(), _labels((2, 2)), _IL[:1], _TL),
    _ctc_error("target_lengths of wrong size", _lp(), _labels((2, 2)), _IL, (2, 1, 1)),
    _ctc_error("input length > T", _lp(), _labels((2, 2)), (5, 3), (2, 1)),
    _ctc_error("negative input length", _lp(), _labels((2, 2)), (-1, 3), (2, 1)),
    _ctc_error("negative target length", _lp(), _labels((2, 2)), (4, 3), (-1, 1)),
    _ctc_error("target length > S", _lp(), _labels((2, 2)), (4, 3), (3, 1)),
    _ctc_error("padded targets, wrong batch", _lp(), _labels((3, 2)), _IL, _TL),
    _ctc_error("concatenated targets != sum", _lp(), _labels((4,)), _IL, _TL),
    _ctc_error("nested-list log_probs", [[[0.0]]], _labels((1, 1)), (1,), (1,)),
    _ctc_error("nested-list targets", _lp(), [[1, 2], [1, 1]], _IL, _TL),
]

__all__ = ["CTC_CASES", "CTC_ERROR_CASES"]
