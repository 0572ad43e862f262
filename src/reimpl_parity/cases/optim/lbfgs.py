"""Parity rows for L-BFGS (``reimpl.optim.lbfgs``): closure-driven trajectories.

The shared machinery steps an optimizer with gradients it draws and no closure; L-BFGS
re-evaluates the loss itself (many times per ``step`` with the line search), so its row
brings its own problem: a least-squares fit with a quartic term (not a quadratic, so the
curvature pairs change along the way and the line search has work to do),

    f(x) = 1/2 ||A x - b||^2 + mu * sum(x^4),

x being every param flattened (complex params as pairs of reals), A and b drawn from a
seed. Some params may be left out of f (their gradient stays None: zeros in L-BFGS's flat
gradient). Both sides run a few ``step(closure)`` calls and return, after each one, the
loss ``step`` returned, the params and the whole state (every history list, ``t``,
``H_diag``... with their Python types), optionally swapping implementations mid-run
through a ``torch.save`` / ``torch.load(weights_only=True)`` checkpoint.

torch's LBFGS has no foreach, fused, capturable or differentiable option, so there is one
row: every option torch has (``lr`` also as a Tensor, ``max_iter``, ``max_eval``, both
tolerances, ``history_size``, ``line_search_fn`` None or "strong_wolfe", and ``maximize``
where the installed torch has it, 2.14 on: then the closure returns -f, so that maximizing
it is the same well-posed problem). Ours repeats torch's operations in torch's order, scalar types
included, so the trajectories agree bit for bit.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

from reimpl.optim.lbfgs import LBFGS
from reimpl_parity.cases.optim._machinery import (
    ALL_DTYPES,
    Draw,
    OptimRow,
    _checkpoint,
    _groups,
    _with,
)
from reimpl_parity.harness import Case
from reimpl_parity.strategies import Call, optional_kwargs, seeds, shapes, tensors

#: the same operations in the same order on both sides: no rounding differences to allow
_EXACT = {dt: (0.0, 0.0) for dt in ALL_DTYPES}
_EXACT_WHY = "exact: reimpl's L-BFGS performs torch's tensor ops and scalar arithmetic in order"


@dataclass(frozen=True)
class LBFGSProblem:
    """What to minimize and how: the data's seed, which params f uses, the steps, a swap."""

    data_seed: int
    unused: tuple[int, ...]  # params left out of f (their grad stays None)
    mu: float
    steps: int
    swap: str | None = None  # "to_torch" / "from_torch"
    swap_at: int = 0
    tensor_lr: bool = False

    def __repr__(self) -> str:
        extra = [f"data_seed={self.data_seed}, mu={self.mu}, steps={self.steps}"]
        if self.unused:
            extra.append(f"unused={list(self.unused)}")
        if self.swap:
            extra.append(f"swap={self.swap}@{self.swap_at}")
        if self.tensor_lr:
            extra.append("tensor_lr")
        return "LBFGSProblem(" + ", ".join(extra) + ")"


def _flat(params: list[Tensor]) -> Tensor:
    parts = [torch.view_as_real(p) if p.is_complex() else p for p in params]
    return torch.cat([p.reshape(-1) for p in parts])


def _objective(problem: LBFGSProblem, params: list[Tensor], sign: float = 1.0) -> Any:
    """The closure: f at the params (grads reset to None first), gradients by backward."""
    used = [p for i, p in enumerate(params) if i not in problem.unused]
    n = sum(2 * p.numel() if p.is_complex() else p.numel() for p in used)
    real = params[0].real.dtype if params else torch.float64
    g = torch.Generator().manual_seed(problem.data_seed)
    m = max(1, n + 1)
    a = (torch.randn(m, n, generator=g, dtype=torch.float64) / max(1, n) ** 0.5).to(real)
    b = torch.randn(m, generator=g, dtype=torch.float64).to(real)
    device = params[0].device if params else "cpu"
    a, b = a.to(device), b.to(device)

    def closure() -> Tensor:
        for p in params:
            p.grad = None
        x = _flat(used) if used else torch.zeros(0, dtype=real, device=device)
        r = a @ x - b
        loss = 0.5 * (r * r).sum() + problem.mu * (x**4).sum()
        loss = loss if sign == 1.0 else -loss
        loss.backward()
        return loss

    return closure


def _copy(v: Any) -> Any:
    """A deep copy of a state value (the history lists are mutated in place later)."""
    if isinstance(v, Tensor):
        return v.detach().clone()
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


def run_lbfgs(
    first: type[torch.optim.Optimizer],
    second: type[torch.optim.Optimizer],
    problem: LBFGSProblem,
    *views: Tensor,
    **kwargs: Any,
) -> dict[str, Any]:
    """Minimize f with ``first`` (``second`` after ``swap_at``); the loss, params and
    state after every step."""
    if problem.tensor_lr and "lr" in kwargs:
        kwargs = {**kwargs, "lr": torch.tensor(kwargs["lr"])}
    params = [v.detach().requires_grad_() for v in views]  # leaves, the drawn layouts kept
    closure = _objective(problem, params, -1.0 if kwargs.get("maximize") else 1.0)
    opt: Any = first(params, **kwargs)
    out: dict[str, Any] = {}
    for step in range(1, problem.steps + 1):
        if problem.swap and step == problem.swap_at:
            sd = _checkpoint(opt.state_dict())
            opt = second(params, **kwargs)
            opt.load_state_dict(sd)
        loss = opt.step(closure)
        snap: dict[str, Any] = {"loss": loss.detach().clone()}
        for i, p in enumerate(params):
            snap[f"param {i}"] = p.detach().clone()
            snap[f"state {i}"] = {k: _copy(v) for k, v in opt.state.get(p, {}).items()}
        out[f"step {step}"] = snap
    return out


@st.composite
def _lbfgs_call(draw: Draw, dtype: torch.dtype, kwargs: st.SearchStrategy[dict[str, Any]],
                tensor_lr: bool) -> Call:  # fmt: skip
    n = draw(st.integers(1, 3))
    specs = [
        draw(tensors(draw(shapes(0, 2, 0, 4)), dtype, regimes=("normal", "large", "tiny")))
        for _ in range(n)
    ]
    steps = draw(st.integers(1, 4))
    swap = draw(st.sampled_from([None, "to_torch", "from_torch"])) if steps > 1 else None
    problem = LBFGSProblem(
        data_seed=draw(seeds),
        # param 0 always in f: with no param in it, backward has nothing to differentiate
        unused=tuple(i for i in range(1, n) if draw(st.sampled_from([False, False, True]))),
        mu=draw(st.sampled_from([0.0, 0.01, 0.1])),
        steps=steps,
        swap=swap,
        swap_at=draw(st.integers(2, steps)) if swap else 0,
        tensor_lr=tensor_lr and draw(st.booleans()),
    )
    return Call((problem, *specs), draw(kwargs))


def _lbfgs_kwargs(dtype: torch.dtype) -> st.SearchStrategy[dict[str, Any]]:
    return optional_kwargs(
        {
            "lr": st.sampled_from([1.0, 0.5, 0.1, 0.0]),
            "max_iter": st.sampled_from([1, 2, 5, 20]),
            # 0: torch's line search is left without a bracket (an UnboundLocalError)
            "max_eval": st.sampled_from([0, 1, 3, 8, 25]),
            "tolerance_grad": st.sampled_from([1e-7, 1e-3, 0.0]),
            "tolerance_change": st.sampled_from([1e-9, 1e-4, 0.0]),
            "history_size": st.sampled_from([1, 2, 5, 100]),
            # "cubic": refused (RuntimeError), once the first direction is a descent one
            "line_search_fn": st.sampled_from([None, "strong_wolfe", "cubic"]),
            **({"maximize": st.booleans()} if _TORCH_MAXIMIZE else {}),
        }
    )


#: torch's LBFGS takes maximize= from 2.14 on
_TORCH_MAXIMIZE = "maximize" in inspect.signature(torch.optim.LBFGS).parameters


@dataclass(frozen=True)
class LBFGSRow(OptimRow):
    """An :class:`OptimRow` whose case drives ``step(closure)`` on its own problem."""

    def case(self) -> Case:
        return Case(
            name=f"optim.{self.name}",
            ours=functools.partial(_ours, self),
            theirs=functools.partial(run_lbfgs, self.theirs, self.theirs),
            inputs=functools.partial(
                _lbfgs_call,
                kwargs=self.kwargs(torch.float64),
                tensor_lr="lr" in self.tensor_hparams,
            ),
            family="optim",
            dtypes=self.dtypes,
            tol=self.tol,
            why=self.why,
            backward=False,
            devices=self.devices,
        )


def _ours(row: LBFGSRow, problem: LBFGSProblem, *views: Tensor, **kwargs: Any) -> Any:
    if problem.swap == "from_torch":
        return run_lbfgs(row.theirs, row.ours, problem, *views, **kwargs)
    return run_lbfgs(row.ours, row.theirs, problem, *views, **kwargs)


ROWS: list[OptimRow] = [
    LBFGSRow(
        name,
        LBFGS,
        torch.optim.LBFGS,
        kwargs,
        _groups(),  # one param group only: LBFGS refuses per-parameter options
        dtypes=ALL_DTYPES,
        tol=_EXACT,
        why=_EXACT_WHY,
        tensor_hparams=("lr",),
    )
    for name, kwargs in (
        ("LBFGS", _lbfgs_kwargs),
        # the line search on every draw: its bracketing, zoom and early exits
        ("LBFGS-strong_wolfe", _with(_lbfgs_kwargs, line_search_fn="strong_wolfe")),
    )
]

__all__ = ["ROWS", "LBFGSProblem", "run_lbfgs"]
