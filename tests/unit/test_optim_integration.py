"""reimpl optimizers under torch's machinery: LR schedulers, GradScaler, torch.compile."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler

import reimpl.optim as ours
from reimpl_parity.compare import compare

OptFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _data(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)


SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "StepLR": lambda o: lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
    "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=5),
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=12),
    "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(o, patience=0, factor=0.5),
    "LinearLR": lambda o: lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=4),
}
OPTS: dict[str, dict[str, Any]] = {
    "SGD": {"lr": 0.05, "momentum": 0.9},
    "Adagrad": {"lr": 0.05},
    "RMSprop": {"lr": 0.01, "momentum": 0.5},
    "Adam": {"lr": 0.01},
    "AdamW": {"lr": 0.01, "amsgrad": True},
}


def _train(
    make_opt: Callable[..., torch.optim.Optimizer],
    sched_name: str,
    steps: int = 12,
) -> tuple[list[torch.Tensor], list[float]]:
    model = _model()
    x, y = _data()
    opt = make_opt(model.parameters())
    sched = SCHEDULERS[sched_name](opt)
    lrs = []
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        if sched_name == "ReduceLROnPlateau":
            sched.step(1.0)  # a plateau: the lr must drop
        else:
            sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return [p.detach() for p in model.parameters()], lrs


@pytest.mark.parametrize("sched_name", list(SCHEDULERS))
@pytest.mark.parametrize("name", list(OPTS))
def test_torch_lr_schedulers_drive_ours(name: str, sched_name: str) -> None:
    if sched_name == "OneCycleLR" and name == "Adagrad":
        pytest.skip("OneCycleLR cycles momentum/betas; Adagrad has neither (torch refuses too)")
    kw = OPTS[name]
    mine = _train(lambda ps: getattr(ours, name)(ps, **kw), sched_name)
    ref = _train(lambda ps: getattr(torch.optim, name)(ps, **kw), sched_name)
    compare(mine, ref, rtol=0, atol=0, what=f"{name} + {sched_name}")


@pytest.mark.parametrize("fused", [None, True])
@pytest.mark.parametrize("name", ["SGD", "Adagrad", "Adam", "AdamW"])
def test_grad_scaler(name: str, fused: bool | None) -> None:
    """torch.amp.GradScaler('cpu') with a scale that overflows on the first step (that step
    is skipped and the scale backs off)."""
    kw = {**OPTS[name], "fused": fused}

    def run(cls: type[torch.optim.Optimizer]) -> tuple[list[torch.Tensor], float]:
        model = _model()
        x, y = _data()
        opt = cls(model.parameters(), **kw)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=2)
        for _ in range(6):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
            loss = ((out.float() - y) ** 2).mean()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return [p.detach() for p in model.parameters()], scaler.get_scale()

    mine, ref = run(getattr(ours, name)), run(getattr(torch.optim, name))
    # torch's fused kernels unscale inside the kernel (grad / scale) where GradScaler
    # multiplies by 1/scale for us: a rounding apart
    tol = (1e-5, 1e-6) if fused else (0.0, 0.0)
    compare(mine, ref, rtol=tol[0], atol=tol[1], what=f"{name} fused={fused} + GradScaler")


@pytest.mark.parametrize("name", ["Adam"])
def test_torch_compile_training_step(name: str) -> None:
    """A compiled training step (forward, backward, our step) equals the same step with
    torch's optimizer compiled the same way (compiled, ``step`` stays a tensor, so the
    bias corrections are tensor math: eager results differ by a rounding).

    backend="aot_eager": traces through dynamo and AOT autograd without inductor's C++
    compile, which is too slow for the CI box's two cores."""
    kw = OPTS[name]

    def run(cls: type[torch.optim.Optimizer], compiled: bool) -> list[torch.Tensor]:
        torch._dynamo.reset()
        model = _model()
        x, y = _data()
        opt = cls(model.parameters(), **kw)

        def step() -> torch.Tensor:
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            return loss

        fn = torch.compile(step, backend="aot_eager") if compiled else step
        for _ in range(4):
            fn()
        return [p.detach().clone() for p in model.parameters()]

    compare(
        run(getattr(ours, name), True),
        run(getattr(torch.optim, name), True),
        rtol=0,
        atol=0,
        what=f"compiled {name}",
    )
