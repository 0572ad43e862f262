"""Parity table for the LR schedulers (and SWALR): learning-rate traces against torch's.

A drawn :class:`Run` describes an optimizer (param groups, float or tensor lrs), a
scheduler (possibly composite), a number of epochs, and twists: starting with
``last_epoch >= 0``, a checkpoint hand-off mid-run (to the same implementation, or
torch → reimpl / reimpl → torch), the deprecated ``step(epoch)``, stepping the scheduler
before the optimizer, a metric sequence (ReduceLROnPlateau). Both sides return the lr
(and momentum) of every group at every epoch, the warnings raised (category and epoch),
``get_last_lr()`` and the final ``state_dict()``.

Schedulers do scalar Python arithmetic, so the dtype of a case is nominal (float64);
the tolerance is :data:`~reimpl_parity.compare.EXACT`: traces and state must be equal
bit for bit.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import strategies as st

import reimpl.optim.lr_scheduler
import reimpl.optim.swa_utils
from reimpl_parity.compare import EXACT
from reimpl_parity.harness import Case
from reimpl_parity.strategies import Call

Draw = Callable[[st.SearchStrategy[Any]], Any]


@dataclass(frozen=True)
class Impl:
    name: str
    lr_scheduler: types.ModuleType
    swa_utils: types.ModuleType


TORCH = Impl("torch", torch.optim.lr_scheduler, torch.optim.swa_utils)
REIMPL = Impl("reimpl", reimpl.optim.lr_scheduler, reimpl.optim.swa_utils)


# ---------------------------------------------------------------- lambdas (module-level:
# plain functions are not saved in state_dicts, callable objects save their __dict__)


def warmup(epoch: int) -> float:
    return min(1.0, (epoch + 1) / 10)


def inv_sqrt(epoch: int) -> float:
    return 1.0 / (1.0 + epoch) ** 0.5


def const_097(epoch: int) -> float:
    return 0.97


class Decay:
    """A callable object: its ``__dict__`` goes into the state_dict."""

    def __init__(self, rate: float) -> None:
        self.rate = rate

    def __call__(self, epoch: int) -> float:
        return self.rate**epoch

    def __repr__(self) -> str:
        return f"Decay({self.rate})"


LAMBDAS: dict[str, Callable[[], Any]] = {
    "warmup": lambda: warmup,
    "inv_sqrt": lambda: inv_sqrt,
    "const_097": lambda: const_097,
    "Decay(0.9)": lambda: Decay(0.9),
}


@dataclass(frozen=True)
class Spec:
    """A scheduler: class name and kwargs, or a composite of member specs."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    members: tuple[Spec, ...] = ()

    def __repr__(self) -> str:
        inner = [repr(m) for m in self.members] + [f"{k}={v!r}" for k, v in self.kwargs]
        return f"{self.name}({', '.join(inner)})"


@dataclass(frozen=True)
class Run:
    spec: Spec
    lrs: tuple[float, ...] = (0.1,)
    epochs: int = 10
    optimizer: str = "sgd"  # sgd (momentum) | adam (betas) | adagrad (neither) | none
    tensor_lr: bool = False
    last_epoch: int = -1  # >= 0: resume from scratch; initial_lr set unless no_initial_lr
    no_initial_lr: bool = False
    handoff: int | None = None  # epoch at which the run is checkpointed and reloaded
    handoff_to: str = "same"  # same | torch->reimpl | reimpl->torch (the `ours` side)
    explicit_epoch: bool = False  # step(epoch) (deprecated; closed form)
    step_first: bool = False  # scheduler.step() before optimizer.step() at epoch 0
    metrics: tuple[float, ...] = field(default=())  # ReduceLROnPlateau


def _make_optimizer(run: Run) -> Any:
    def lr(x: float) -> Any:
        return torch.tensor(x, dtype=torch.float64) if run.tensor_lr else x

    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr(x)} for x in run.lrs]
    if run.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr(0.1), momentum=0.9)
    if run.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr(0.1))
    if run.optimizer == "adagrad":
        return torch.optim.Adagrad(groups, lr=lr(0.1))
    return object()


def _build(impl: Impl, spec: Spec, opt: Any, last_epoch: int = -1) -> Any:
    kwargs = dict(spec.kwargs)
    if "lr_lambda" in kwargs:
        lam = kwargs["lr_lambda"]
        kwargs["lr_lambda"] = (
            [LAMBDAS[n]() for n in lam] if isinstance(lam, tuple) else LAMBDAS[lam]()
        )
    for k, v in kwargs.items():
        if isinstance(v, tuple):
            kwargs[k] = list(v)
    if last_epoch >= 0:
        kwargs["last_epoch"] = last_epoch
    if spec.name == "ChainedScheduler":
        return impl.lr_scheduler.ChainedScheduler([_build(impl, m, opt) for m in spec.members])
    if spec.name == "SequentialLR":
        members = [_build(impl, m, opt) for m in spec.members]
        return impl.lr_scheduler.SequentialLR(opt, members, **kwargs)
    module = impl.swa_utils if spec.name == "SWALR" else impl.lr_scheduler
    return getattr(module, spec.name)(opt, **kwargs)


def _floats(values: Any) -> list[float]:
    return [float(v) for v in values]


def _snapshot(opt: Any) -> list[float]:
    out = []
    for g in opt.param_groups:
        out.append(float(g["lr"]))
        if "betas" in g:
            out.append(float(g["betas"][0]))
        elif "momentum" in g:
            out.append(float(g["momentum"]))
    return out


def _sides(run: Run, ours: bool) -> tuple[Impl, Impl]:
    if not ours:
        return TORCH, TORCH
    if run.handoff is None or run.handoff >= run.epochs:
        return REIMPL, REIMPL
    return {
        "same": (REIMPL, REIMPL),
        "torch->reimpl": (TORCH, REIMPL),
        "reimpl->torch": (REIMPL, TORCH),
    }[run.handoff_to]


def run_schedule(run: Run, *, ours: bool) -> dict[str, Any]:
    """Drive one run; ``ours`` picks reimpl (per ``handoff_to``), else torch throughout."""
    first, second = _sides(run, ours)
    opt = _make_optimizer(run)
    if run.last_epoch >= 0 and not run.no_initial_lr:
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"]
    caught: list[tuple[int, str]] = []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sched = _build(first, run.spec, opt, run.last_epoch)
        trace = [_snapshot(opt)]
        plateau = run.spec.name == "ReduceLROnPlateau"
        for epoch in range(len(run.metrics) if plateau else run.epochs):
            if run.handoff == epoch:
                opt_state, sched_state = opt.state_dict(), sched.state_dict()
                opt = _make_optimizer(run)
                sched = _build(second, run.spec, opt)
                opt.load_state_dict(opt_state)
                sched.load_state_dict(sched_state)
            if not (run.step_first and epoch == 0):
                opt.step()
            if plateau:
                sched.step(run.metrics[epoch])
            elif run.explicit_epoch:
                sched.step(sched.last_epoch + 1)
            else:
                sched.step()
            trace.append(_snapshot(opt))
            caught += [(epoch, w.category.__name__) for w in seen]
            seen.clear()
    return {
        "trace": trace,
        "last_lr": _floats(sched.get_last_lr()),
        "state": sched.state_dict(),
        "warnings": caught,
    }


def _ours(run: Run) -> dict[str, Any]:
    try:
        return run_schedule(run, ours=True)
    except Exception as e:
        # After a reimpl->torch hand-off torch's own objects run on this side; some of
        # torch's errors have no message (the harness demands one of reimpl). Label them.
        if str(e).strip() or run.handoff_to != "reimpl->torch":
            raise
        raise type(e)(f"torch's scheduler raised {type(e).__name__} after the hand-off") from e


def _theirs(run: Run) -> dict[str, Any]:
    return run_schedule(run, ours=False)


# ---------------------------------------------------------------- strategies

gammas = st.one_of(st.sampled_from([0.1, 0.5, 0.9, 1.0]), st.floats(0.05, 1.2))
factors = st.floats(0.01, 1.0)


def _kw(**kw: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, v) for k, v in kw.items() if v is not _DEFAULT))


_DEFAULT = object()


def _opt(draw: Draw, s: st.SearchStrategy[Any]) -> Any:
    """A kwarg that is sometimes left to its default."""
    return draw(st.one_of(st.just(_DEFAULT), s))


@st.composite
def _simple_spec(draw: Draw, name: str, n_groups: int, epochs: int) -> Spec:
    lam = st.sampled_from(sorted(LAMBDAS))
    if name == "StepLR":
        kw = _kw(step_size=draw(st.integers(1, 40)), gamma=_opt(draw, gammas))
    elif name == "MultiStepLR":
        ms = draw(st.lists(st.integers(0, max(epochs, 1)), max_size=6))
        kw = _kw(milestones=tuple(ms), gamma=_opt(draw, gammas))
    elif name == "ExponentialLR":
        kw = _kw(gamma=draw(st.floats(0.8, 1.01)))
    elif name in ("LambdaLR", "MultiplicativeLR"):
        one = draw(lam)
        per_group = tuple(draw(lam) for _ in range(n_groups))
        kw = _kw(lr_lambda=draw(st.sampled_from([one, per_group])))
    elif name == "ConstantLR":
        kw = _kw(factor=_opt(draw, factors), total_iters=_opt(draw, st.integers(1, 30)))
    elif name == "LinearLR":
        kw = _kw(
            start_factor=_opt(draw, factors),
            end_factor=_opt(draw, st.floats(0.0, 1.0)),
            total_iters=_opt(draw, st.integers(1, 40)),
        )
    elif name == "PolynomialLR":
        kw = _kw(total_iters=_opt(draw, st.integers(1, 60)), power=_opt(draw, st.floats(0.5, 3.0)))
    elif name == "CosineAnnealingLR":
        kw = _kw(T_max=draw(st.integers(1, 60)), eta_min=_opt(draw, st.sampled_from([0.0, 1e-3])))
    elif name == "CosineAnnealingWarmRestarts":
        kw = _kw(
            T_0=draw(st.integers(1, 25)),
            T_mult=_opt(draw, st.integers(1, 3)),
            eta_min=_opt(draw, st.sampled_from([0.0, 1e-3])),
        )
    elif name == "OneCycleLR":
        max_lr = draw(st.sampled_from([1.0, 0.5, tuple([0.5, 1.0, 2.0][:n_groups])]))
        short = draw(st.integers(0, 5)) == 0  # stepping past total_steps raises
        total = draw(st.integers(1, epochs + 1) if short else st.integers(epochs, epochs + 20))
        kw = _kw(
            max_lr=max_lr,
            total_steps=total,
            pct_start=_opt(draw, st.floats(0.05, 0.95)),
            anneal_strategy=_opt(draw, st.sampled_from(["cos", "linear"])),
            cycle_momentum=_opt(draw, st.booleans()),
            div_factor=_opt(draw, st.sampled_from([10.0, 25.0])),
            final_div_factor=_opt(draw, st.sampled_from([100.0, 1e4])),
            three_phase=_opt(draw, st.booleans()),
        )
    elif name == "CyclicLR":
        kw = _kw(
            base_lr=draw(st.sampled_from([0.001, 0.01])),
            max_lr=draw(st.sampled_from([0.1, 1.0, tuple([0.1, 0.2, 0.3][:n_groups])])),
            step_size_up=_opt(draw, st.integers(1, 30)),
            step_size_down=_opt(draw, st.integers(1, 30)),
            mode=_opt(draw, st.sampled_from(["triangular", "triangular2", "exp_range"])),
            gamma=_opt(draw, st.floats(0.9, 1.0)),
            cycle_momentum=_opt(draw, st.booleans()),
        )
    elif name == "SWALR":
        swa = draw(st.sampled_from([0.05, tuple([0.05, 0.01, 0.2][:n_groups])]))
        kw = _kw(
            swa_lr=swa,
            anneal_epochs=_opt(draw, st.integers(0, 20)),
            anneal_strategy=_opt(draw, st.sampled_from(["cos", "linear"])),
        )
    else:
        raise ValueError(name)
    return Spec(name, kw)


CHAINABLE = (
    "StepLR",
    "MultiStepLR",
    "ExponentialLR",
    "MultiplicativeLR",
    "ConstantLR",
    "LinearLR",
    "PolynomialLR",
    "CosineAnnealingLR",
)
SIMPLE = (*CHAINABLE, "LambdaLR", "CosineAnnealingWarmRestarts", "OneCycleLR", "CyclicLR")
#: no last_epoch / step(epoch) for these
#: (OneCycleLR keeps its bounds in the param groups only when last_epoch == -1)
_NO_RESUME = {"ChainedScheduler", "ReduceLROnPlateau", "OneCycleLR"}
_NO_EPOCH_ARG = {"ChainedScheduler", "SequentialLR", "ReduceLROnPlateau"}


@st.composite
def _spec(draw: Draw, name: str, n_groups: int, epochs: int) -> Spec:
    if name == "ChainedScheduler":
        names = draw(st.lists(st.sampled_from(CHAINABLE), min_size=1, max_size=3))
        return Spec(name, (), tuple(draw(_simple_spec(n, n_groups, epochs)) for n in names))
    if name == "SequentialLR":
        # members: simple schedulers, now and then a ChainedScheduler (nesting)
        member_names = st.sampled_from(SIMPLE[:-2]) | st.just("ChainedScheduler")
        names = draw(st.lists(member_names, min_size=1, max_size=3))
        members = tuple(draw(_spec(n, n_groups, epochs)) for n in names)
        cuts = sorted(draw(st.lists(st.integers(1, max(epochs, 1)), min_size=len(names) - 1,
                                    max_size=len(names) - 1)))  # fmt: skip
        return Spec(name, (("milestones", tuple(cuts)),), members)
    if name == "ReduceLROnPlateau":
        min_lr = draw(st.sampled_from([0, 1e-3, tuple([1e-3, 0.0, 0.02][:n_groups])]))
        return Spec(
            name,
            _kw(
                mode=_opt(draw, st.sampled_from(["min", "max"])),
                factor=_opt(draw, st.floats(0.05, 0.9)),
                patience=_opt(draw, st.integers(0, 5)),
                threshold=_opt(draw, st.sampled_from([0.0, 1e-4, 0.1, 1.0])),
                threshold_mode=_opt(draw, st.sampled_from(["rel", "abs"])),
                cooldown=_opt(draw, st.integers(0, 3)),
                min_lr=min_lr,
                eps=_opt(draw, st.sampled_from([1e-8, 1e-3])),
            ),
        )
    return draw(_simple_spec(name, n_groups, epochs))


@st.composite
def runs(draw: Draw, name: str) -> Run:
    n_groups = draw(st.integers(1, 3))
    lrs = tuple(draw(st.sampled_from([0.1, 0.01, 1.0, 0.05, 0.3])) for _ in range(n_groups))
    epochs = draw(st.one_of(st.integers(0, 40), st.integers(40, 300)))
    spec = draw(_spec(name, n_groups, epochs))
    metrics: tuple[float, ...] = ()
    if name == "ReduceLROnPlateau":
        steps = draw(st.lists(st.sampled_from([-1.0, -0.01, 0.0, 0.0, 0.0, 0.01, 1.0]),
                              max_size=150))  # fmt: skip
        level, values = 10.0, []
        for s in steps:  # a random walk with plateaus
            level += s
            values.append(level)
        metrics = tuple(values)
        epochs = len(metrics)
    last_epoch = -1
    if name not in _NO_RESUME and draw(st.integers(0, 4)) == 0:
        last_epoch = draw(st.integers(0, 30))
    handoff = draw(st.one_of(st.none(), st.integers(0, max(epochs - 1, 0))))
    optimizer = "sgd"
    if name in ("CyclicLR", "OneCycleLR"):
        optimizer = draw(st.sampled_from(["sgd", "adam"]))
    return Run(
        spec=spec,
        lrs=lrs,
        epochs=epochs,
        optimizer=optimizer,
        tensor_lr=draw(st.integers(0, 4)) == 0,
        last_epoch=last_epoch,
        handoff=handoff,
        handoff_to=draw(st.sampled_from(["same", "torch->reimpl", "reimpl->torch"])),
        explicit_epoch=name not in _NO_EPOCH_ARG and draw(st.integers(0, 5)) == 0,
        step_first=draw(st.integers(0, 5)) == 0,
        metrics=metrics,
    )


def _inputs(name: str) -> Callable[[torch.dtype], st.SearchStrategy[Call]]:
    return lambda dtype: runs(name).map(lambda r: Call((r,)))


_EXACT = {torch.float64: EXACT}
NAMES = (*SIMPLE, "ChainedScheduler", "SequentialLR", "ReduceLROnPlateau", "SWALR")

SCHEDULER_CASES = [
    Case(
        name,
        _ours,
        _theirs,
        _inputs(name),
        family="lr_scheduler",
        dtypes=(torch.float64,),
        tol=_EXACT,
        why="scalar Python arithmetic in the same order: equal bit for bit",
        backward=False,
        devices=("cpu",),
    )
    for name in NAMES
]


# ---------------------------------------------------------------- bad input

_S = Spec
BAD_RUNS: dict[str, Run] = {
    "StepLR-step_size-0": Run(_S("StepLR", (("step_size", 0),))),
    "StepLR-step_size-negative": Run(_S("StepLR", (("step_size", -3),))),
    "MultiStepLR-milestones-not-iterable": Run(_S("MultiStepLR", (("milestones", 5),))),
    "ExponentialLR-gamma-negative": Run(_S("ExponentialLR", (("gamma", -0.5),))),
    "ConstantLR-factor-above-1": Run(_S("ConstantLR", (("factor", 2.0),))),
    "ConstantLR-factor-0": Run(_S("ConstantLR", (("factor", 0.0),))),
    "LinearLR-start-0": Run(_S("LinearLR", (("start_factor", 0.0),))),
    "LinearLR-end-above-1": Run(_S("LinearLR", (("end_factor", 1.5),))),
    "LinearLR-total-0": Run(_S("LinearLR", (("total_iters", 0),))),
    "CosineAnnealingLR-T_max-0": Run(_S("CosineAnnealingLR", (("T_max", 0),))),
    "WarmRestarts-T_0-0": Run(_S("CosineAnnealingWarmRestarts", (("T_0", 0),))),
    "WarmRestarts-T_mult-float": Run(
        _S("CosineAnnealingWarmRestarts", (("T_0", 3), ("T_mult", 1.5)))
    ),
    "WarmRestarts-eta_min-str": Run(
        _S("CosineAnnealingWarmRestarts", (("T_0", 3), ("eta_min", "0")))
    ),
    "LambdaLR-too-few-lambdas": Run(_S("LambdaLR", (("lr_lambda", ("warmup",)),)), lrs=(0.1, 0.2)),
    "MultiplicativeLR-not-callable": Run(_S("MultiplicativeLR", (("lr_lambda", 3),))),
    "OneCycleLR-no-length": Run(_S("OneCycleLR", (("max_lr", 1.0),))),
    "OneCycleLR-epochs-0": Run(
        _S("OneCycleLR", (("epochs", 0), ("max_lr", 1.0), ("steps_per_epoch", 10)))
    ),
    "OneCycleLR-total-0": Run(_S("OneCycleLR", (("max_lr", 1.0), ("total_steps", 0)))),
    "OneCycleLR-past-total": Run(_S("OneCycleLR", (("max_lr", 1.0), ("total_steps", 5))), epochs=8),
    "OneCycleLR-epochs-mismatch": Run(
        _S("OneCycleLR", (("epochs", 2), ("max_lr", 1.0), ("steps_per_epoch", 3))), epochs=9
    ),
    "OneCycleLR-pct_start-int": Run(
        _S("OneCycleLR", (("max_lr", 1.0), ("pct_start", 1), ("total_steps", 9)))
    ),
    "OneCycleLR-bad-anneal": Run(
        _S("OneCycleLR", (("anneal_strategy", "cubic"), ("max_lr", 1.0), ("total_steps", 9)))
    ),
    "OneCycleLR-max_lr-length": Run(_S("OneCycleLR", (("max_lr", (1.0, 2.0)), ("total_steps", 9)))),
    "OneCycleLR-no-momentum": Run(
        _S("OneCycleLR", (("max_lr", 1.0), ("total_steps", 9))), optimizer="adagrad"
    ),
    "CyclicLR-bad-mode": Run(
        _S("CyclicLR", (("base_lr", 0.01), ("max_lr", 0.1), ("mode", "square")))
    ),
    "CyclicLR-no-momentum": Run(
        _S("CyclicLR", (("base_lr", 0.01), ("max_lr", 0.1))), optimizer="adagrad"
    ),
    "CyclicLR-not-optimizer": Run(
        _S("CyclicLR", (("base_lr", 0.01), ("max_lr", 0.1))), optimizer="none"
    ),
    "StepLR-not-optimizer": Run(_S("StepLR", (("step_size", 3),)), optimizer="none"),
    "OneCycleLR-not-optimizer": Run(
        _S("OneCycleLR", (("max_lr", 1.0), ("total_steps", 9))), optimizer="none"
    ),
    "Plateau-not-optimizer": Run(_S("ReduceLROnPlateau"), optimizer="none"),
    "SWALR-not-optimizer": Run(_S("SWALR", (("swa_lr", 0.1),)), optimizer="none"),
    "StepLR-missing-initial_lr": Run(
        _S("StepLR", (("step_size", 3),)), last_epoch=4, no_initial_lr=True
    ),
    "Plateau-factor-1": Run(_S("ReduceLROnPlateau", (("factor", 1.0),)), metrics=(1.0,)),
    "Plateau-bad-mode": Run(_S("ReduceLROnPlateau", (("mode", "up"),)), metrics=(1.0,)),
    "Plateau-bad-threshold-mode": Run(
        _S("ReduceLROnPlateau", (("threshold_mode", "log"),)), metrics=(1.0,)
    ),
    "Plateau-min_lr-length": Run(
        _S("ReduceLROnPlateau", (("min_lr", (0.0, 0.1)),)), metrics=(1.0,)
    ),
    "SWALR-bad-anneal": Run(_S("SWALR", (("anneal_strategy", "exp"), ("swa_lr", 0.1)))),
    "SWALR-negative-epochs": Run(_S("SWALR", (("anneal_epochs", -1), ("swa_lr", 0.1)))),
    "SWALR-swa_lr-length": Run(_S("SWALR", (("swa_lr", (0.1, 0.2)),))),
    "SequentialLR-milestones-count": Run(
        _S("SequentialLR", (("milestones", (1, 2)),), (_S("StepLR", (("step_size", 2),)),))
    ),
    "SequentialLR-empty": Run(_S("SequentialLR", (("milestones", ()),))),
    "ChainedScheduler-empty": Run(_S("ChainedScheduler")),
}


def _fixed(run: Run) -> Callable[[torch.dtype], st.SearchStrategy[Call]]:
    return lambda dtype: st.just(Call((run,)))


SCHEDULER_ERROR_CASES = [
    Case(
        name,
        _ours,
        _theirs,
        _fixed(run),
        family="lr_scheduler-errors",
        dtypes=(torch.float64,),
        backward=False,
        devices=("cpu",),
    )
    for name, run in BAD_RUNS.items()
]
