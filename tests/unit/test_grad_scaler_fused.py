"""GradScaler's fused protocol: a ``fused=True`` optimizer advertises
``_step_supports_amp_scaling``, so ``torch.amp.GradScaler`` does not unscale the grads
itself but hands the step ``grad_scale`` and ``found_inf``; the step unscales in its one
pass and skips everything (params, state, steps) when ``found_inf`` is set.

Held to torch's own fused optimizers on the same run (RMSprop, which torch has no fused
kernel for, to torch's RMSprop under the same GradScaler). On the C kernels here, and on
the Triton kernels through ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

import reimpl.optim as ours
from reimpl.kernels import cpu_fused, triton_installed

ROWS: list[tuple[str, dict[str, Any], bool]] = [
    ("Adam", {"lr": 1e-2, "weight_decay": 0.1}, True),
    ("AdamW", {"lr": 1e-2, "amsgrad": True}, True),
    ("SGD", {"lr": 1e-2, "momentum": 0.9, "nesterov": True}, True),
    ("Adagrad", {"lr": 1e-1, "lr_decay": 0.01}, True),
    ("RMSprop", {"lr": 1e-2, "momentum": 0.5, "centered": True}, False),  # torch: no fused
]
ATOL = 1e-5  # one pass per element, another operation order than torch's kernels
INF_AT = 3  # the step whose gradient overflows


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def _run(make: Any, kwargs: dict[str, Any], steps: int = 8) -> list[list[torch.Tensor]]:
    model = _model(0)
    opt = make(model.parameters(), **kwargs)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(steps):
        x, y = torch.randn(32, 8, generator=g), torch.randn(32, 1, generator=g)
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        scaler.scale(loss).backward()
        if i == INF_AT:
            next(model.parameters()).grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
        state = [s for p in model.parameters() for s in opt.state[p].values() if torch.is_tensor(s)]
        out.append(
            [p.detach().clone() for p in model.parameters()]
            + [p.grad.clone() for p in model.parameters()]
            + [s.clone() for s in state]
            + [scaler.get_scale() * torch.ones(())]
        )
    return out


def _compare(name: str, kwargs: dict[str, Any], torch_fused: bool) -> None:
    theirs_kwargs = dict(kwargs, fused=True) if torch_fused else dict(kwargs)
    mine = _run(getattr(ours, name), dict(kwargs, fused=True))
    theirs = _run(getattr(torch.optim, name), theirs_kwargs)
    n = len(list(_model(0).parameters()))
    for step, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        assert len(a) == len(b)
        for j, (x, y) in enumerate(zip(a, b, strict=True)):
            if n <= j < 2 * n:  # grads
                if step == INF_AT and not torch_fused:
                    continue  # torch's unfused path unscales before it skips; fused kernels do not
                # why: computed from params that differ by the fused rounding, times 2^10
                tol = {"atol": 1e-3, "rtol": 1e-3}
            elif not torch_fused:
                # why: against torch's unfused RMSprop; centered's v - g_avg^2 cancels
                tol = {"atol": 1e-4, "rtol": 1e-4}
            else:
                tol = {"atol": ATOL, "rtol": 1e-5}
            torch.testing.assert_close(
                x, y, **tol, msg=lambda m, s=step, j=j: f"{name} step {s} #{j}: {m}"
            )


@pytest.mark.skipif(cpu_fused.library() is None, reason="no C compiler")
@pytest.mark.parametrize(("name", "kwargs", "torch_fused"), ROWS, ids=[r[0] for r in ROWS])
def test_grad_scaler_run_equals_torch_fused_run(name: str, kwargs: dict, torch_fused: bool) -> None:
    opt = getattr(ours, name)([torch.nn.Parameter(torch.zeros(2))], fused=True)
    # as torch's fused optimizer, where torch has one (its Adagrad: from 2.12 on)
    expected = not torch_fused or getattr(
        getattr(torch.optim, name)([torch.nn.Parameter(torch.zeros(2))], fused=True),
        "_step_supports_amp_scaling",
        False,
    )
    assert opt._step_supports_amp_scaling == expected
    _compare(name, kwargs, torch_fused)


@pytest.mark.skipif(
    not triton_installed()
    or os.environ.get("TRITON_INTERPRET") != "1"
    or torch.cuda.is_available(),
    reason="the Triton kernels through the interpreter (CPU-only CI)",
)
@pytest.mark.parametrize(("name", "kwargs", "torch_fused"), ROWS, ids=[r[0] for r in ROWS])
def test_grad_scaler_run_on_the_triton_kernels(
    name: str, kwargs: dict, torch_fused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reimpl.kernels.triton_optim as triton_optim

    monkeypatch.setenv("REIMPL_TRITON_CPU", "1")
    seen: list[Any] = []
    kernel = getattr(triton_optim, name.lower().removesuffix("w") + "_")

    def spy(*args: Any, **kw: Any) -> Any:
        seen.append((kw.get("grad_scale"), kw.get("found_inf")))
        return kernel(*args, **kw)

    monkeypatch.setattr(triton_optim, kernel.__name__, spy)
    _compare(name, kwargs, torch_fused)
    probe = getattr(ours, name)([torch.nn.Parameter(torch.zeros(2))], fused=True)
    if probe._step_supports_amp_scaling:
        assert seen and all(s is not None and f is not None for s, f in seen), "not handed over"
    else:  # (torch 2.11's Adagrad: GradScaler unscales itself, the kernel sees no scale)
        assert seen and all(s is None and f is None for s, f in seen), "handed over"


@pytest.mark.parametrize(("name", "kwargs", "torch_fused"), ROWS, ids=[r[0] for r in ROWS])
def test_found_inf_skips_the_whole_step(name: str, kwargs: dict, torch_fused: bool) -> None:
    p = torch.nn.Parameter(torch.randn(5))
    opt = getattr(ours, name)([p], fused=True, **kwargs)
    p.grad = torch.randn(5)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
    p_before, g = p.detach().clone(), torch.randn(5) * 1024
    p.grad = g.clone()
    opt.grad_scale, opt.found_inf = torch.tensor(1024.0), torch.tensor(1.0)
    opt.step()
    torch.testing.assert_close(p.detach(), p_before, rtol=0, atol=0)
    torch.testing.assert_close(p.grad, g, rtol=0, atol=0)  # not even unscaled
    for k, v in before.items():
        torch.testing.assert_close(opt.state[p][k], v, rtol=0, atol=0, msg=k)
    # found_inf = 0: the step happens, on grads divided by grad_scale (written back so)
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    torch.testing.assert_close(p.grad, g / 1024, rtol=0, atol=0)
    assert not torch.equal(p.detach(), p_before)


def test_unfused_optimizers_do_not_take_the_hand_over() -> None:
    p = torch.nn.Parameter(torch.randn(3))
    opt = ours.Adam([p])
    assert not getattr(opt, "_step_supports_amp_scaling", False)
    p.grad = torch.randn(3)
    opt.found_inf = torch.tensor(0.0)
    with pytest.raises(AssertionError, match="only fused=True"):
        opt.step()
