"""Non-finite gradients through the C fused kernels give torch's results.

NaN and ±inf take the branches finite inputs never reach (a NaN comparison is false, a sign
of NaN is 0 in torch), so each fused family steps params whose gradients hold them, and
torch (the oracle) steps the same; NaN must land where torch's lands. The oracle is torch's
fused kernel where torch has one, else its per-tensor path, except where torch's own paths
disagree on non-finite input (the row says which and why).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import reimpl.optim as R
from reimpl.kernels import cpu_fused

pytestmark = pytest.mark.skipif(cpu_fused.library() is None, reason="no C compiler")

FUSED, LOOP = {"fused": True}, {"foreach": False}
#: (optimizer, kwargs, torch's path used as the oracle)
FAMILIES: list[tuple[str, dict[str, Any], dict[str, bool]]] = [
    ("Adam", {"amsgrad": True}, FUSED),
    ("AdamW", {}, FUSED),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}, FUSED),
    ("Adagrad", {}, FUSED),
    ("RMSprop", {"centered": True, "momentum": 0.5}, LOOP),
    ("NAdam", {"weight_decay": 0.1}, LOOP),
    ("RAdam", {"weight_decay": 0.1}, LOOP),
    ("Adamax", {}, LOOP),
    ("Adadelta", {}, LOOP),
    ("Rprop", {}, LOOP),
    # torch's per-tensor ASGD keeps an infinite param infinite (it scales, then adds), its
    # multi-tensor form turns it into NaN (its averaging subtracts inf - inf); our fused
    # kernel computes the multi-tensor form's expression, so that is its oracle
    ("ASGD", {"t0": 1}, {"foreach": True}),
]


#: 64: one thread; 40000: over the kernels' 32768-element grain, so the threads split it
SIZES = [64, 40_000]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name,kwargs,oracle", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_nonfinite_gradients_as_torch(
    name: str,
    kwargs: dict[str, Any],
    oracle: dict[str, bool],
    size: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[str] = []
    real = cpu_fused.Prepared.run

    def spy(self: Any, family: str, *args: Any, **kw: Any) -> Any:
        ran.append(family)
        return real(self, family, *args, **kw)

    monkeypatch.setattr(cpu_fused.Prepared, "run", spy)
    g = torch.Generator().manual_seed(0)
    start = torch.randn(size, generator=g)
    ours = start.clone().requires_grad_()
    theirs = start.clone().requires_grad_()
    opt = getattr(R, name)([ours], fused=True, **kwargs)
    ref = getattr(torch.optim, name)([theirs], **oracle, **kwargs)
    for step in range(4):
        grad = torch.randn(size, generator=g)
        grad[step::9] = float("nan")
        grad[step + 3 :: 11] = float("inf")
        grad[step + 5 :: 13] = -float("inf")
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        opt.step()
        ref.step()
        torch.testing.assert_close(
            ours.detach(), theirs.detach(), equal_nan=True, rtol=1e-5, atol=1e-6,
            msg=lambda m, s=step: f"{name}(fused=True, {kwargs}) vs torch {oracle}, step {s}: {m}",
        )  # fmt: skip
    assert ran, f"{name}: the C kernel did not run"
