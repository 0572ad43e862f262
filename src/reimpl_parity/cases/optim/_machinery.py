"""The optimizer table's machinery: a row, the training problem it draws, the trajectory
both sides run, and the strategies rows share.

A drawn call is a :class:`Problem` (param groups, steps, gradient seed, which grads are
``None``, an optional mid-run ``state_dict`` swap) plus the parameters as
:class:`TensorSpec` recipes and the constructor kwargs. Each side runs the problem and
returns ``{"step k": {"param i": ..., "state i": {...}}}``, so a mismatch names the step,
the param and the state key.
"""

from __future__ import annotations

import functools
import io
import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

from reimpl_parity.harness import Case
from reimpl_parity.strategies import (
    FLOAT_DTYPES,
    LAYOUTS,
    Call,
    TensorSpec,
    optional_kwargs,
    seeds,
    shapes,
    tensors,
)

Draw = Callable[[st.SearchStrategy[Any]], Any]
KwargsFor = Callable[[torch.dtype], st.SearchStrategy[dict[str, Any]]]

LAYOUTS_CONTIGUOUS = LAYOUTS[:1]
REAL_DTYPES = FLOAT_DTYPES
ALL_DTYPES = (*REAL_DTYPES, torch.complex128, torch.complex64)


@dataclass(frozen=True)
class Problem:
    """What to train: which params form which group, for how long, with which grads."""

    groups: tuple[tuple[int, ...], ...]
    group_kwargs: tuple[dict[str, Any], ...]
    steps: int
    grad_seed: int
    grad_scale: float = 1.0
    none_grad: float = 0.0  # chance that a param has no grad at a step
    swap: str | None = None  # "to_torch" / "from_torch": change implementation mid-run
    swap_at: int = 0
    tensor_hparams: tuple[str, ...] = ()  # kwargs given as one-element CPU tensors
    sparse: bool = False  # sparse COO gradients

    def __repr__(self) -> str:
        extra = [f"groups={[list(g) for g in self.groups]}"]
        if any(self.group_kwargs):
            extra.append(f"group_kwargs={list(self.group_kwargs)}")
        extra.append(f"steps={self.steps}, grad_seed={self.grad_seed}")
        if self.grad_scale != 1.0:
            extra.append(f"grad_scale={self.grad_scale}")
        if self.none_grad:
            extra.append(f"none_grad={self.none_grad}")
        if self.swap:
            extra.append(f"swap={self.swap}@{self.swap_at}")
        if self.tensor_hparams:
            extra.append(f"tensor_hparams={self.tensor_hparams}")
        if self.sparse:
            extra.append("sparse")
        return "Problem(" + ", ".join(extra) + ")"


def _grad(problem: Problem, step: int, i: int, p: Tensor) -> Tensor | None:
    g = torch.Generator().manual_seed((problem.grad_seed * 1_000_003 + step * 7919 + i) % 2**62)
    if problem.none_grad and float(torch.rand((), generator=g)) < problem.none_grad:
        return None
    real = torch.view_as_real(p) if p.is_complex() else p
    v = torch.randn(real.shape, generator=g, dtype=torch.float64) * problem.grad_scale
    if problem.sparse and p.dim() >= 1 and p.shape[0] > 0:
        # keep a random subset of rows, with one row listed twice (coalescing matters)
        rows = torch.randperm(p.shape[0], generator=g)[: max(1, p.shape[0] // 2)]
        rows = torch.cat([rows, rows[:1]])
        vals = v[rows].to(p.dtype)
        return torch.sparse_coo_tensor(rows[None], vals, p.shape).to(p.device)
    out = v.to(real.dtype)
    if p.is_complex():
        out = torch.view_as_complex(out.contiguous())
    return out.to(p.device)


def _snapshot(opt: torch.optim.Optimizer, params: list[Tensor]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, p in enumerate(params):
        out[f"param {i}"] = p.detach().clone()
        state = opt.state.get(p, {})
        out[f"state {i}"] = {
            k: (v.detach().clone() if isinstance(v, Tensor) else v) for k, v in state.items()
        }
    return out


def _checkpoint(sd: dict[str, Any]) -> dict[str, Any]:
    """Round-trip through torch.save / torch.load(weights_only=True)."""
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def run_trajectory(
    first: type[torch.optim.Optimizer],
    second: type[torch.optim.Optimizer],
    problem: Problem,
    *params: Tensor,
    **kwargs: Any,
) -> dict[str, Any]:
    """Train ``params`` with ``first`` (switching to ``second`` at ``swap_at`` when the
    problem asks for a swap); return the params and state after every step."""
    kwargs = dict(kwargs)
    for name in problem.tensor_hparams:
        if name == "betas":
            kwargs["betas"] = tuple(torch.tensor(b) for b in kwargs.get("betas", (0.9, 0.999)))
        elif name in kwargs:
            kwargs[name] = torch.tensor(kwargs[name])
    plist = list(params)

    def groups() -> list[dict[str, Any]]:
        return [
            {"params": [plist[i] for i in idx], **gk}
            for idx, gk in zip(problem.groups, problem.group_kwargs, strict=True)
        ]

    opt = first(groups(), **kwargs)
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        # torch warns once per process when the first sparse tensor is built: whichever
        # side runs first would see it, so it says nothing about either implementation
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        _train(first, second, problem, plist, groups, kwargs, opt, out)
    return out


def _train(
    first: type[torch.optim.Optimizer],
    second: type[torch.optim.Optimizer],
    problem: Problem,
    plist: list[Tensor],
    groups: Callable[[], list[dict[str, Any]]],
    kwargs: dict[str, Any],
    opt: torch.optim.Optimizer,
    out: dict[str, Any],
) -> None:
    for step in range(1, problem.steps + 1):
        if problem.swap and step == problem.swap_at:
            sd = _checkpoint(opt.state_dict())
            opt = second(groups(), **kwargs)
            opt.load_state_dict(sd)
        for i, p in enumerate(plist):
            p.grad = _grad(problem, step, i, p)
        opt.step()
        out[f"step {step}"] = _snapshot(opt, plist)


@st.composite
def _problem_call(
    draw: Draw,
    dtype: torch.dtype,
    kwargs_for: KwargsFor,
    group_kwargs: st.SearchStrategy[dict[str, Any]],
    tensor_hparams: tuple[str, ...],
    sparse: bool,
    contiguous: bool,
    none_grads: bool,
    large_grads: bool,
) -> Call:
    n = draw(st.integers(1, 4))
    specs: list[TensorSpec] = []
    for _ in range(n):
        shape = draw(shapes(0, 3, 0, 4) if not sparse else shapes(1, 2, 1, 5))
        specs.append(
            draw(
                tensors(
                    shape,
                    dtype,
                    regimes=("normal", "large", "tiny"),
                    layouts=LAYOUTS_CONTIGUOUS if sparse or contiguous else LAYOUTS,
                )
            )
        )
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=2))) if n > 1 else []
    bounds = [0, *cuts, n]
    groups = tuple(tuple(range(a, b)) for a, b in itertools.pairwise(bounds))
    steps = draw(st.integers(20, 24))
    swap = draw(st.sampled_from([None, None, "to_torch", "from_torch"]))
    kwargs = draw(kwargs_for(dtype))
    problem = Problem(
        groups=groups,
        group_kwargs=tuple(draw(group_kwargs) if i else {} for i in range(len(groups))),
        steps=steps,
        grad_seed=draw(seeds),
        grad_scale=draw(st.sampled_from([1.0, 1.0, 1e-3, 1e3] if large_grads else [1.0, 1e-3])),
        none_grad=draw(st.sampled_from([0.0, 0.0, 0.25])) if none_grads else 0.0,
        swap=swap,
        swap_at=draw(st.integers(2, steps)) if swap else 0,
        tensor_hparams=tuple(h for h in tensor_hparams if draw(st.booleans())),
        sparse=sparse,
    )
    return Call((problem, *specs), kwargs)


# ------------------------------------------------------------------ hyperparameters

_paths = st.sampled_from([None, False, True])
_lrs = st.sampled_from([0.0, 1e-3, 1e-2, 0.1, 1.0])
_decays = st.sampled_from([0.0, 1e-2, 0.1])


def _always_fused(
    kwargs: st.SearchStrategy[dict[str, Any]], fused: bool
) -> st.SearchStrategy[dict[str, Any]]:
    """A fused row always passes fused=True (the other keywords may be left out)."""
    return kwargs.map(lambda kw: {**kw, "fused": True}) if fused else kwargs


def _with(kwargs_for: KwargsFor, **fixed: Any) -> KwargsFor:
    """``kwargs_for`` with some keywords always set (e.g. ``capturable=True``)."""
    return lambda dtype: kwargs_for(dtype).map(lambda kw: {**kw, **fixed})


def path_kwargs(
    strategies: dict[str, st.SearchStrategy[Any]], fused: bool
) -> st.SearchStrategy[dict[str, Any]]:
    """An optimizer's keyword strategies, each sometimes left out, with the path keywords:
    ``foreach`` and ``differentiable`` on a default row, ``fused=True`` always on a fused
    row (whose other path keywords torch would refuse next to it)."""
    if not fused:
        strategies = {**strategies, "foreach": _paths, "differentiable": st.booleans()}
    return _always_fused(optional_kwargs(strategies), fused)


def _groups(**opts: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Per-group overrides (valid values only: groups are not re-validated by torch)."""
    return optional_kwargs(opts)


# ---------------------------------------------------------------------------- table

# torch's fused kernels are one pass per element, with their own operation order (and
# float32 arithmetic for 16-bit params), and so do ours (the C kernels; on CPU 16-bit
# params take the widened multi-tensor fallback): results agree to rounding, not bit for
# bit, and 16-bit trajectories drift a few ulps over 20+ steps. Fused rows draw no grads
# ~1e3: there the rounding differences sit on large momentum buffers that cancel to
# small values (absolute error ~ulp(1e4)), and float16 squares overflow, where the
# kernel's inf/nan handling differs.
# Fused rows draw contiguous params only: torch 2.13's fused CPU kernels mis-step
# non-contiguous params (they walk the storage as if contiguous).
_FUSED_TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 1e-5),
    torch.float16: (2e-2, 1e-3),
    torch.bfloat16: (1e-1, 1e-2),
}
_FUSED_WHY = "fused: torch's kernel orders (and for 16-bit, widens) the arithmetic differently"


@dataclass(frozen=True)
class OptimRow:
    name: str
    ours: type[torch.optim.Optimizer]
    theirs: type[torch.optim.Optimizer]
    kwargs: KwargsFor
    group_kwargs: st.SearchStrategy[dict[str, Any]]
    dtypes: tuple[torch.dtype, ...] = ALL_DTYPES
    tol: dict[torch.dtype, tuple[float, float]] = field(default_factory=dict)
    why: str = ""
    devices: tuple[str, ...] = ("cpu", "cuda")
    tensor_hparams: tuple[str, ...] = ()
    sparse: bool = False
    contiguous: bool = False  # draw contiguous params only
    none_grads: bool = True  # let some params have no grad at some steps
    large_grads: bool = True  # also draw grads ~1e3

    def case(self) -> Case:
        return Case(
            name=f"optim.{self.name}",
            ours=_ours_side(self),
            theirs=functools.partial(run_trajectory, self.theirs, self.theirs),
            inputs=functools.partial(
                _problem_call,
                kwargs_for=self.kwargs,
                group_kwargs=self.group_kwargs,
                tensor_hparams=self.tensor_hparams,
                sparse=self.sparse,
                contiguous=self.contiguous,
                none_grads=self.none_grads,
                large_grads=self.large_grads,
            ),
            family="optim",
            dtypes=self.dtypes,
            tol=self.tol,
            why=self.why,
            backward=False,
            devices=self.devices,
        )


def _ours_side(row: OptimRow) -> Callable[..., Any]:
    def run(problem: Problem, *params: Tensor, **kwargs: Any) -> dict[str, Any]:
        if problem.swap == "from_torch":
            return run_trajectory(row.theirs, row.ours, problem, *params, **kwargs)
        return run_trajectory(row.ours, row.theirs, problem, *params, **kwargs)

    return run


def torch_unfused(cls: type[torch.optim.Optimizer]) -> Callable[..., torch.optim.Optimizer]:
    """The oracle for a reimpl-only ``fused=True``: torch's ``cls`` has no such keyword, so
    it runs its default path with the same other kwargs."""

    def make(params: Any, **kwargs: Any) -> torch.optim.Optimizer:
        kwargs.pop("fused", None)
        return cls(params, **kwargs)

    return make


def standard_rows(
    name: str,
    ours: type[torch.optim.Optimizer],
    theirs: type[torch.optim.Optimizer],
    kwargs_for: Callable[[bool], KwargsFor],
    groups: st.SearchStrategy[dict[str, Any]],
    *,
    fused_why: str,
    tol: dict[torch.dtype, tuple[float, float]] | None = None,
    why: str = "",
    tensor_hparams: tuple[str, ...] = ("lr",),
    torch_fused: bool = False,
    fused_dtypes: tuple[torch.dtype, ...] = (torch.float64, torch.float32),
    fused_tol: dict[torch.dtype, tuple[float, float]] = _FUSED_TOL,
    fused_groups: st.SearchStrategy[dict[str, Any]] | None = None,
    fused_none_grads: bool = True,
    capturable: bool = True,
) -> list[OptimRow]:
    """The rows most optimizers have (``kwargs_for(fused)`` draws a row's keywords):

    - ``name``: every option on torch's own paths, against torch on the same path;
    - ``name-fused``: ``fused=True`` on contiguous params without ~1e3 grads (see
      ``_FUSED_TOL``), against torch's fused kernel where torch has one
      (``torch_fused``), else against torch's default path (``torch_unfused``). The
      default ``fused_dtypes`` leave out 16-bit params: torch's 16-bit per-tensor loop
      rounds after every op, where a fused pass widens to float32 and rounds once;
    - ``name-capturable`` (unless ``capturable=False``: torch's class has no such
      option): CUDA only, since torch refuses ``capturable=True`` on the CPU at the
      first step.
    """
    rows = [
        OptimRow(
            name,
            ours,
            theirs,
            kwargs_for(False),
            groups,
            tol=tol or {},
            why=why,
            tensor_hparams=tensor_hparams,
        ),
        OptimRow(
            f"{name}-fused",
            ours,
            theirs if torch_fused else torch_unfused(theirs),  # type: ignore[arg-type]
            kwargs_for(True),
            groups if fused_groups is None else fused_groups,
            dtypes=fused_dtypes,
            tol=fused_tol,
            why=fused_why,
            contiguous=True,
            large_grads=False,
            none_grads=fused_none_grads,
        ),
    ]
    if capturable:
        rows.append(
            OptimRow(
                f"{name}-capturable",
                ours,
                theirs,
                _with(kwargs_for(False), capturable=True),
                groups,
                dtypes=REAL_DTYPES,
                devices=("cuda",),
                tensor_hparams=tensor_hparams,
            )
        )
    return rows
