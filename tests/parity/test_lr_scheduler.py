"""LR scheduler parity: the SCHEDULER_CASES table against torch, plus API-shape checks."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
import torch.optim.lr_scheduler as T

import reimpl.optim.lr_scheduler as R
from reimpl_parity.cases.schedulers import (
    NAMES,
    REIMPL,
    SCHEDULER_CASES,
    SCHEDULER_ERROR_CASES,
    TORCH,
    Run,
    Spec,
    run_schedule,
)
from reimpl_parity.compare import compare
from reimpl_parity.harness import check_case

CLASSES = [n for n in NAMES if n != "SWALR"] + ["LRScheduler"]


@pytest.mark.parametrize("case", SCHEDULER_CASES, ids=lambda c: c.name)
def test_scheduler_parity(case) -> None:
    check_case(case, torch.float64, "cpu")


@pytest.mark.parametrize("case", SCHEDULER_ERROR_CASES, ids=lambda c: c.name)
def test_scheduler_bad_input(case) -> None:
    check_case(case, torch.float64, "cpu", max_examples=1)


def _params(cls: type) -> list[tuple[str, object, object]]:
    sig = inspect.signature(cls.__init__)
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


@pytest.mark.parametrize("name", CLASSES)
def test_signature_matches_torch(name: str) -> None:
    assert _params(getattr(R, name)) == _params(getattr(T, name))


@pytest.mark.parametrize("name", CLASSES)
def test_isinstance_torch_base(name: str) -> None:
    assert issubclass(getattr(R, name), T.LRScheduler)
    assert R._LRScheduler is R.LRScheduler


def _sgd(*lrs: float) -> torch.optim.SGD:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=0.1, momentum=0.9)


def _trace(make, opt, n: int = 40) -> list[list[float]]:
    sched = make(opt)
    out = []
    for _ in range(n):
        opt.step()
        sched.step()
        out.append([float(g["lr"]) for g in opt.param_groups])
    return out


@pytest.mark.parametrize("outer", ["ChainedScheduler", "SequentialLR"])
def test_torch_composites_drive_our_schedulers(outer: str) -> None:
    """torch's ChainedScheduler/SequentialLR holding *our* schedulers == all-torch."""

    def make(mod, inner):
        def build(opt):
            members = [inner.StepLR(opt, 5, 0.5), inner.LinearLR(opt, 0.2, total_iters=7)]
            if outer == "ChainedScheduler":
                return mod.ChainedScheduler(members)
            return mod.SequentialLR(opt, members, milestones=[12])

        return build

    expected = _trace(make(T, T), _sgd(0.1, 0.3))
    assert _trace(make(T, R), _sgd(0.1, 0.3)) == expected
    assert _trace(make(R, T), _sgd(0.1, 0.3)) == expected
    assert _trace(make(R, R), _sgd(0.1, 0.3)) == expected


def test_plateau_rejected_in_composites() -> None:
    opt = _sgd(0.1)
    for plateau in (R.ReduceLROnPlateau(opt), T.ReduceLROnPlateau(opt)):
        with pytest.raises(ValueError, match="ReduceLROnPlateau"):
            R.ChainedScheduler([plateau])
        with pytest.raises(ValueError, match="ReduceLROnPlateau"):
            R.SequentialLR(opt, [plateau], milestones=[])


def _caught(fn) -> list[type[Warning]]:
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fn()
    return [x.category for x in w]


def test_warnings_match_torch() -> None:
    for mod in (T, R):
        opt = _sgd(0.1)
        s = mod.StepLR(opt, 3)
        assert _caught(s.step) == [UserWarning]  # before optimizer.step()
        assert _caught(lambda s=s: s.step(5)) == [UserWarning]  # epoch deprecated
        assert _caught(s.get_lr) == [UserWarning]  # use get_last_lr()
        opt = _sgd(0.1)
        s = mod.StepLR(opt, 3)
        opt.step = lambda *a, **k: None  # replaced after the scheduler wrapped it
        assert _caught(s.step) == [UserWarning]
        opt = _sgd(0.1)
        s = mod.StepLR(opt, 3)
        opt.step()
        assert _caught(s.step) == []


def test_one_wrapper_shared_with_torch() -> None:
    opt = _sgd(0.1)
    R.StepLR(opt, 3)
    wrapped = opt.step
    T.StepLR(opt, 3)
    R.ExponentialLR(opt, 0.9)
    assert opt.step is wrapped


@pytest.mark.parametrize("impl", [TORCH, REIMPL], ids=lambda i: i.name)
def test_state_dict_round_trip_to_plain_python(impl) -> None:
    """state_dicts are torch.save-able and reload into the other implementation."""
    import io

    opt = _sgd(0.1)
    s = impl.lr_scheduler.CyclicLR(opt, 0.01, 0.1, step_size_up=4)
    for _ in range(6):
        opt.step()
        s.step()
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    other = (REIMPL if impl is TORCH else TORCH).lr_scheduler.CyclicLR(
        _sgd(0.1), 0.01, 0.1, step_size_up=4
    )
    other.load_state_dict(torch.load(buf, weights_only=False))
    compare(other.state_dict(), s.state_dict(), rtol=0, atol=0, what="state")


def test_tensor_lr_stays_tensor() -> None:
    lr = torch.tensor(0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    s = R.ExponentialLR(opt, 0.5)
    opt.step()
    s.step()
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.05)
    assert isinstance(s.get_last_lr()[0], torch.Tensor)


def test_run_schedule_smoke() -> None:
    run = Run(Spec("StepLR", (("step_size", 2),)), lrs=(0.1, 0.2), epochs=5)
    out = run_schedule(run, ours=True)
    assert out["trace"][-1][0] == pytest.approx(0.1 * 0.1**2)
