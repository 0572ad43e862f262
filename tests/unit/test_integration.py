"""What frameworks rely on: torch.compile without graph breaks, and the isinstance checks
Lightning and Hugging Face make on optimizers and schedulers."""

from __future__ import annotations

import pytest
import torch

import reimpl.nn as rnn
import reimpl.nn.functional as F
import reimpl.optim as ropt
from reimpl.optim import lr_scheduler as rsched


def _compiled(fn):  # type: ignore[no-untyped-def]
    torch._dynamo.reset()
    # aot_eager: the eager kernels run, so random draws equal eager mode's (inductor would
    # use its own generator) and the test stays fast on CPU
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


@pytest.mark.parametrize(
    "make",
    [
        lambda: rnn.Dropout(0.3),
        lambda: rnn.Dropout2d(0.3),
        lambda: rnn.AlphaDropout(0.3),
        lambda: rnn.BatchNorm2d(3),
        lambda: rnn.BatchNorm2d(3, momentum=None),
        lambda: rnn.BatchNorm2d(3, track_running_stats=False),
    ],
    ids=[
        "Dropout",
        "Dropout2d",
        "AlphaDropout",
        "BatchNorm2d",
        "BatchNorm2d-cma",
        "BatchNorm2d-no-stats",
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_regularizers_compile_fullgraph(make, training: bool) -> None:  # type: ignore[no-untyped-def]
    eager_mod, comp_mod = make(), make()
    eager_mod.train(training)
    comp_mod.train(training)
    compiled = _compiled(comp_mod)
    x = torch.randn(4, 3, 5, 5)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(0)
    out_e = eager_mod(x1)
    torch.manual_seed(0)
    out_c = compiled(x2)
    torch.testing.assert_close(out_c, out_e)
    out_e.square().sum().backward()
    out_c.square().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)
    for (name, a), (_, b) in zip(eager_mod.named_buffers(), comp_mod.named_buffers(), strict=True):
        torch.testing.assert_close(b, a, msg=name)


def test_functional_batch_norm_and_dropout_compile() -> None:
    def step(x: torch.Tensor, rm: torch.Tensor, rv: torch.Tensor) -> torch.Tensor:
        y = F.batch_norm(x, rm, rv, training=True, momentum=0.1)
        return F.dropout(y, 0.5, training=True)

    compiled = _compiled(step)
    x = torch.randn(8, 4)
    rm1, rv1, rm2, rv2 = torch.zeros(4), torch.ones(4), torch.zeros(4), torch.ones(4)
    torch.manual_seed(1)
    a = step(x, rm1, rv1)
    torch.manual_seed(1)
    b = compiled(x, rm2, rv2)
    torch.testing.assert_close(b, a)
    torch.testing.assert_close(rm2, rm1)
    torch.testing.assert_close(rv2, rv1)


OPTIMIZERS = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW"]


@pytest.mark.skipif(not hasattr(ropt, "Adam"), reason="needs the optimizers")
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_isinstance_checks_frameworks_make(name: str) -> None:
    p = torch.nn.Parameter(torch.randn(3))
    opt = getattr(ropt, name)([p], lr=0.1)
    assert isinstance(opt, torch.optim.Optimizer)
    sched = rsched.StepLR(opt, step_size=2)
    assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
    plateau = rsched.ReduceLROnPlateau(opt)
    # Lightning accepts ReduceLROnPlateau by type name or the torch class it subclasses
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau) or (
        type(plateau).__name__ == "ReduceLROnPlateau"
    )


@pytest.mark.skipif(not hasattr(ropt, "Adam"), reason="needs the optimizers")
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_our_scheduler_drives_our_optimizer_like_torch(name: str) -> None:
    lrs = {}
    for kind, opt_cls, sched_cls in (
        ("torch", getattr(torch.optim, name), torch.optim.lr_scheduler.MultiStepLR),
        ("reimpl", getattr(ropt, name), rsched.MultiStepLR),
    ):
        p = torch.nn.Parameter(torch.ones(2))
        opt = opt_cls([p], lr=0.5)
        sched = sched_cls(opt, milestones=[2, 4], gamma=0.3)
        trace = []
        for _ in range(6):
            p.grad = torch.ones(2)
            opt.step()
            sched.step()
            trace.append((float(opt.param_groups[0]["lr"]), p.detach().clone()))
        lrs[kind] = trace
    for (lr_t, p_t), (lr_r, p_r) in zip(lrs["torch"], lrs["reimpl"], strict=True):
        assert lr_r == lr_t
        torch.testing.assert_close(p_r, p_t)


def _unwrapped_step(opt: torch.optim.Optimizer):  # type: ignore[no-untyped-def]
    # torch's Optimizer wraps every step in a profiling hook that breaks the graph on
    # purpose (torch's own optimizers too); what must trace whole is the update under it
    raw = type(opt).step
    while hasattr(raw, "__wrapped__"):
        raw = raw.__wrapped__

    def step() -> None:
        with torch.no_grad():
            raw(opt)

    return step


@pytest.mark.skipif(not hasattr(ropt, "Adam"), reason="needs the optimizers")
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("SGD", {"momentum": 0.9, "nesterov": True}),
        ("Adagrad", {}),
        ("RMSprop", {"centered": True}),
        ("Adam", {"amsgrad": True}),
        ("AdamW", {"foreach": True}),
    ],
)
def test_optimizer_step_compiles_fullgraph(name: str, kwargs: dict) -> None:  # type: ignore[type-arg]
    results = []
    for lib, compiled in ((torch.optim, False), (ropt, True)):
        p = torch.nn.Parameter(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)))
        opt = getattr(lib, name)([p], lr=0.1, **kwargs)
        step = _compiled(_unwrapped_step(opt)) if compiled else opt.step
        for i in range(3):
            p.grad = torch.full_like(p, 0.1 * (i + 1))
            step()
        results.append(p.detach().clone())
    torch.testing.assert_close(results[1], results[0])
