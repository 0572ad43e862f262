"""Run one case on reimpl and on torch, compare everything, report the worst error.

A :class:`Case` is a row of a parity table. :func:`check_call` compares one drawn call;
:func:`check_case` drives hypothesis over a case for one dtype and device. The tests and
``reimpl check`` both go through here, so they can never disagree.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reimpl_parity.compare import Diff, ParityError, compare, tolerance
from reimpl_parity.strategies import FLOAT_DTYPES, Call

__all__ = ["Case", "CaseReport", "TorchSideDifference", "check_call", "check_case", "torch_gap"]


@dataclass(frozen=True)
class Case:
    """One row: a reimpl callable, its torch oracle, and how to draw calls for a dtype."""

    name: str
    ours: Callable[..., Any]
    theirs: Callable[..., Any]
    inputs: Callable[[torch.dtype], st.SearchStrategy[Call]]
    family: str = ""
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
    tol: Mapping[torch.dtype, tuple[float, float]] = field(default_factory=dict)
    why: str = ""  # the reason for any tolerance override
    backward: bool = True
    devices: tuple[str, ...] = ("cpu", "cuda")


def fixed_call_case(
    name: str,
    ours: Callable[..., Any],
    theirs: Callable[..., Any],
    family: str,
    *args: Any,
    **kwargs: Any,
) -> Case:
    """A row for one fixed call (bad input, as a rule): float32, CPU, no backward; the
    outcome compared is torch's exception type (or value, where torch accepts it)."""
    call = Call(args, kwargs)
    return Case(
        name,
        ours,
        theirs,
        lambda dt: st.just(call),
        family=family,
        dtypes=(torch.float32,),
        backward=False,
        devices=("cpu",),
    )


@dataclass
class Outcome:
    value: Any = None
    error: BaseException | None = None
    warnings: tuple[type[Warning], ...] = ()
    grads: dict[str, Any] = field(default_factory=dict)
    grad_error: BaseException | None = None


def _upstream(out: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype).to(out.device)


_TRITON_SPEC = importlib.util.find_spec("triton")
_TRITON_DIRS = tuple(_TRITON_SPEC.submodule_search_locations or ()) if _TRITON_SPEC else ()


def _interpreter_warning(w: warnings.WarningMessage) -> bool:
    """Raised inside Triton's own package: its CPU interpreter, which runs the kernels only in
    the tests (triton 3.6's converts one-element arrays with a numpy deprecation)."""
    return any(w.filename.startswith(d) for d in _TRITON_DIRS)


def run_side(fn: Callable[..., Any], call: Call, device: str, *, backward: bool) -> Outcome:
    """Call ``fn`` on freshly made tensors; record result, exception, warnings and gradients."""
    args, kwargs, leaves = call.make(device)
    res = Outcome()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res.value = fn(*args, **kwargs)
        except Exception as e:  # the exception is the result we compare
            res.error = e
    res.warnings = tuple(
        sorted(
            {w.category for w in caught if not _interpreter_warning(w)}, key=lambda c: c.__name__
        )
    )
    out = res.value
    if backward and res.error is None and isinstance(out, torch.Tensor) and out.requires_grad:
        names = list(leaves)
        try:
            grads = torch.autograd.grad(
                out, [leaves[n] for n in names], _upstream(out, call.seed), allow_unused=True
            )
            res.grads = dict(zip(names, grads, strict=True))
        except Exception as e:
            res.grad_error = e
    return res


class TorchSideDifference(ParityError):
    """torch raised where reimpl computed, and what torch said is a gap of the installed torch
    (no kernel for this dtype or device), not a verdict on the input: nothing to compare with.
    ``reimpl check`` reports these apart from mismatches (failing only under ``--strict``)."""


def torch_gap(err: BaseException) -> bool:
    """torch declined for want of a kernel ("... not implemented for 'Half'"), not because the
    input is bad: reimpl computing there is a difference of torch's, not a mismatch."""
    text = str(err)
    return isinstance(err, (NotImplementedError, RuntimeError)) and (
        "not implemented for" in text or "Could not run" in text
    )


def _same_error(ours: BaseException | None, theirs: BaseException | None, where: str) -> None:
    if theirs is None and ours is None:
        return
    if ours is None and theirs is not None and torch_gap(theirs):
        raise TorchSideDifference(
            f"{where}: torch {torch.__version__} raised {type(theirs).__name__}: {theirs}; "
            "reimpl computed (a gap of this torch version, not a mismatch)"
        )
    if theirs is None:
        raise ParityError(f"{where}: reimpl raised {type(ours).__name__}: {ours}; torch did not")
    if ours is None:
        raise ParityError(
            f"{where}: torch raised {type(theirs).__name__}: {theirs}; reimpl did not"
        )
    if not isinstance(ours, type(theirs)):
        raise ParityError(
            f"{where}: reimpl raised {type(ours).__name__}: {ours}; "
            f"torch raised {type(theirs).__name__}: {theirs}"
        )
    if not str(ours).strip() and _raised_in_reimpl(ours):
        raise ParityError(f"{where}: reimpl raised {type(ours).__name__} with an empty message")


def _raised_in_reimpl(err: BaseException) -> bool:
    """Whether reimpl's own code raised ``err`` (a scenario may run torch's objects on our
    side too, e.g. a scheduler handed over from torch: their messages are not ours)."""
    tb = err.__traceback__
    module = ""
    while tb is not None:
        module, tb = tb.tb_frame.f_globals.get("__name__", ""), tb.tb_next
    return module == "reimpl" or module.startswith("reimpl.")


def check_call(case: Case, call: Call, dtype: torch.dtype, device: str) -> Diff:
    """Compare value, exception type, warning categories and gradients; raise ParityError."""
    where = f"{case.name}{call!r} on {device}"
    theirs = run_side(case.theirs, call, device, backward=case.backward)
    ours = run_side(case.ours, call, device, backward=case.backward)
    _same_error(ours.error, theirs.error, where)
    if theirs.error is not None:
        return Diff()
    if ours.warnings != theirs.warnings:
        raise ParityError(
            f"{where}: warnings {[w.__name__ for w in ours.warnings]}, "
            f"torch {[w.__name__ for w in theirs.warnings]}"
        )
    rtol, atol = tolerance(dtype, case.tol)
    diff = compare(ours.value, theirs.value, rtol=rtol, atol=atol, what=f"{where}: output")
    _same_error(ours.grad_error, theirs.grad_error, f"{where}: backward")
    for name, g in theirs.grads.items():
        diff.update(
            compare(ours.grads.get(name), g, rtol=rtol, atol=atol, what=f"{where}: grad of {name}")
        )
    return diff


@dataclass
class CaseReport:
    """One row of ``reimpl check``. ``failure``: a real mismatch (reimpl differs from
    torch); ``error``: the check itself broke (an exception inside the case, a flaky
    example), with the call that was running; ``torch_side``: torch could not serve as the
    oracle (see :class:`TorchSideDifference`)."""

    case: str
    dtype: torch.dtype
    device: str
    examples: int = 0
    diff: Diff = field(default_factory=Diff)
    failure: str | None = None
    error: str | None = None
    torch_side: str | None = None
    last_call: str = ""

    @property
    def ok(self) -> bool:
        return self.failure is None and self.error is None

    @property
    def status(self) -> str:
        if self.failure is not None:
            return "MISMATCH"
        if self.error is not None:
            return "ERROR"
        return "torch-side" if self.torch_side is not None else "ok"


def check_case(
    case: Case,
    dtype: torch.dtype,
    device: str,
    *,
    max_examples: int | None = None,
    derandomize: bool | None = None,
    raise_on_failure: bool = True,
) -> CaseReport:
    """Run hypothesis over ``case`` at ``dtype`` on ``device`` (profile settings unless given)."""
    report = CaseReport(case.name, dtype, device)
    overrides: dict[str, Any] = {
        "deadline": None,
        "suppress_health_check": [
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
        "database": None,
    }
    if max_examples is not None:
        overrides["max_examples"] = max_examples
    if derandomize is not None:
        overrides["derandomize"] = derandomize

    @settings(**overrides)
    @given(call=case.inputs(dtype))
    def run(call: Call) -> None:
        report.examples += 1
        report.last_call = f"{case.name}{call!r} on {device}"
        try:
            report.diff.update(check_call(case, call, dtype, device))
        except TorchSideDifference as e:  # recorded, and the search goes on
            report.torch_side = report.torch_side or str(e)

    try:
        run()
    except ParityError as e:
        report.failure = str(e)
        if raise_on_failure:
            raise
    except Exception as e:  # a row, never a traceback: the check must survive any case
        if raise_on_failure:
            raise
        report.error = f"{type(e).__name__}: {e}\n  while checking {report.last_call}"
    return report
