"""Autocast rows for the parity tables.

An autocast row runs a plain row's reimpl and torch callables each inside the same
``torch.autocast`` context -- the device type of the call's first tensor, the row's
lower-precision dtype -- and compares them as any row: result dtype and value, gradients
(taken after the context is left, as a training step does), exception type, warning
categories. The drawn calls are the plain row's, at float32, bfloat16 and float16, with
the other floating-point tensors (targets, weights) sometimes float32 instead: what a
model under autocast hands a loss (16-bit logits, float32 buffers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

from reimpl_parity.compare import TOLERANCES
from reimpl_parity.harness import Case
from reimpl_parity.strategies import Call, TensorSpec

Draw = Callable[[st.SearchStrategy[Any]], Any]

#: (device type, autocast dtype) of the rows made for each plain row
RUNS: tuple[tuple[str, torch.dtype], ...] = (
    ("cpu", torch.bfloat16),
    ("cpu", torch.float16),
    ("cuda", torch.float16),
    ("cuda", torch.bfloat16),
)
#: the dtypes the drawn calls' tensors start in
INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def under_autocast(fn: Callable[..., Any], dtype: torch.dtype) -> Callable[..., Any]:
    """``fn`` called inside ``torch.autocast(<device type of the first tensor>, dtype)``."""

    def run(*args: Any, **kwargs: Any) -> Any:
        device_type = next(a.device.type for a in args if isinstance(a, Tensor))
        with torch.autocast(device_type, dtype=dtype):
            return fn(*args, **kwargs)

    return run


def _to_float32(spec: Any, draw: Draw) -> Any:
    if isinstance(spec, TensorSpec) and spec.dtype.is_floating_point and draw(st.booleans()):
        return dataclasses.replace(spec, dtype=torch.float32)
    return spec


@st.composite
def mixed_dtypes(draw: Draw, calls: st.SearchStrategy[Call]) -> Call:
    """A drawn call whose tensors after the first are sometimes float32 instead."""
    call = draw(calls)
    args = (*call.args[:1], *(_to_float32(a, draw) for a in call.args[1:]))
    kwargs = {k: _to_float32(v, draw) for k, v in call.kwargs.items()}
    return Call(args, kwargs, seed=call.seed)


def _short(dtype: torch.dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def autocast_case(
    case: Case,
    device: str,
    dtype: torch.dtype,
    *,
    tol: Mapping[torch.dtype, tuple[float, float]] | None = None,
    why: str = "",
    mixed: bool = True,
) -> Case:
    """``case`` run under ``torch.autocast(device, dtype)`` (tolerance: ``tol`` or the row's)."""
    inputs = case.inputs
    draw_inputs = (lambda dt: mixed_dtypes(inputs(dt))) if mixed else inputs
    return Case(
        f"{case.name}[autocast {device} {_short(dtype)}]",
        under_autocast(case.ours, dtype),
        under_autocast(case.theirs, dtype),
        draw_inputs,
        family=case.family,
        dtypes=INPUT_DTYPES,
        tol=case.tol if tol is None else tol,
        why=why if tol is not None else case.why,
        backward=case.backward,
        devices=(device,),
    )


def loss_rows(plain: list[Case], fp32_on_cpu: set[str]) -> list[Case]:
    """Each plain loss row under every run of :data:`RUNS`. On CPU the rows named in
    ``fp32_on_cpu`` compute in float32 (torch's fp32 policy), so float32's tolerance holds
    whatever the inputs' dtype; the others keep the row's tolerance."""
    f32_tol = {dt: TOLERANCES[torch.float32] for dt in INPUT_DTYPES}
    rows = []
    for case in plain:
        for device, dtype in RUNS:
            if device == "cpu" and case.name in fp32_on_cpu:
                why = "CPU autocast computes this loss in float32 (torch's fp32 policy)"
                rows.append(autocast_case(case, device, dtype, tol=f32_tol, why=why))
            else:
                rows.append(autocast_case(case, device, dtype))
    return rows
