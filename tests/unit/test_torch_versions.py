"""Private torch API is used only behind a fallback, so a torch without it still works:
each fallback is exercised here by hiding torch's version and comparing the optimizers
with torch's own (on the installed torch, where both exist)."""

from __future__ import annotations

import importlib

import pytest
import torch

import reimpl.optim as ours
from reimpl.optim import _common as base


def _trajectory(make, steps: int = 5, **kwargs) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    ps = [
        torch.nn.Parameter(torch.randn(4)),
        torch.nn.Parameter(torch.randn(3, dtype=torch.float64)),
    ]
    opt = make(ps, lr=0.1, **kwargs)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        opt.step()
    return [p.detach().clone() for p in ps]


@pytest.mark.parametrize("foreach", [False, True])
def test_grouping_fallback_matches_torch(monkeypatch: pytest.MonkeyPatch, foreach: bool) -> None:
    want = _trajectory(torch.optim.Adam, foreach=foreach)
    monkeypatch.delattr(torch.optim.Optimizer, "_group_tensors_by_device_and_dtype")
    got = _trajectory(ours.Adam, foreach=foreach)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_health_check_under_either_name(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    want = _trajectory(torch.optim.Adam)
    for name in ("_accelerator_graph_capture_health_check", "_cuda_graph_capture_health_check"):
        monkeypatch.delattr(torch.optim.Optimizer, name, raising=False)
    monkeypatch.setattr(
        torch.optim.Optimizer,
        "_cuda_graph_capture_health_check",
        lambda self: calls.append("old"),
        raising=False,
    )
    got = _trajectory(ours.Adam)
    assert calls, "the older name was not used"
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_differentiable_decorator_fallback_keeps_grad_mode() -> None:
    step = base._own_use_grad_for_differentiable(lambda self: torch.is_grad_enabled())

    class Fake:
        def __init__(self) -> None:
            self.defaults = {"differentiable": False}

    fake = Fake()
    with torch.enable_grad():
        assert step(fake) is False and torch.is_grad_enabled()
    fake.defaults = {"differentiable": True}
    with torch.no_grad():
        assert step(fake) is True and not torch.is_grad_enabled()
    # the module takes torch's decorator where it exists
    torch_mod = importlib.import_module("torch.optim.optimizer")
    if hasattr(torch_mod, "_use_grad_for_differentiable"):
        assert base.use_grad_for_differentiable is torch_mod._use_grad_for_differentiable
