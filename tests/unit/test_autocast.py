"""Autocast beyond the parity tables (which compare every loss, batch norm and dropout
under ``torch.autocast`` row by row): a whole training step under CPU autocast against
the same step with torch's layers, ``torch.compile(fullgraph=True)`` under autocast, the
fallback for torch versions whose autocast queries take no device argument, and (marked
``cuda``) torch's refusal of ``binary_cross_entropy`` under CUDA autocast."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as TF

import reimpl.nn as RN
import reimpl.nn.functional as F
from reimpl.nn.functional import _autocast

g = torch.Generator().manual_seed(0)
X = torch.randn(6, 5, generator=g).to(torch.bfloat16)
IDX = torch.randint(0, 5, (6,), generator=g)
U = torch.rand(6, 5, generator=g)

CALLS: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "cross_entropy": ((X, IDX), {"label_smoothing": 0.1, "weight": U[0]}),
    "nll_loss": ((X, IDX), {"weight": U[0]}),
    "binary_cross_entropy": ((torch.sigmoid(X), U), {}),
    "binary_cross_entropy_with_logits": ((X, U), {"pos_weight": U[1]}),
    "mse_loss": ((X, U), {"weight": U}),
    "huber_loss": ((X, U), {"delta": 0.5}),
    "batch_norm": ((X, None, None, U[0], U[1], True), {}),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_compile_fullgraph_under_cpu_autocast(name: str) -> None:
    args, kw = CALLS[name]
    fn = getattr(F, name)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: fn(*a, **kw), fullgraph=True, backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = compiled(*args), getattr(TF, name)(*args, **kw)
    assert ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs)


def _model(ns: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16),
        ns.BatchNorm1d(16),
        torch.nn.ReLU(),
        ns.Dropout(0.25),
        torch.nn.Linear(16, 4),
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_training_step_under_cpu_autocast_matches_torch(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 8, generator=gen), torch.randint(0, 4, (12,), generator=gen)
    results = []
    for ns in (RN, torch.nn):
        model = _model(ns)
        torch.manual_seed(2)
        with torch.autocast("cpu", dtype=dtype):
            logits = model(x)
            loss = ns.CrossEntropyLoss(label_smoothing=0.1)(logits, y)
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        results.append((logits, loss, grads, model.state_dict()))
    (lo, so, go, bo), (lt, st, gt, bt) = results
    assert lo.dtype == lt.dtype == dtype and so.dtype == st.dtype == torch.float32
    torch.testing.assert_close(lo, lt)
    torch.testing.assert_close(so, st)
    for a, b in zip(go, gt, strict=True):
        torch.testing.assert_close(a, b)
    for k in bt:
        torch.testing.assert_close(bo[k], bt[k], msg=k)


def test_fallback_for_autocast_queries_without_a_device_argument(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch < 2.4: ``is_autocast_enabled()`` takes no argument and means CUDA; the CPU
    state is ``is_autocast_cpu_enabled()``."""
    cuda_enabled = torch.is_autocast_enabled

    def no_device_argument() -> bool:
        return bool(cuda_enabled("cuda"))

    x = torch.randn(3)
    seen = []
    for on in (False, True):
        # patched inside: torch.autocast itself needs the real query
        with (
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=on),
            monkeypatch.context() as m,
            warnings.catch_warnings(),
        ):
            m.setattr(torch, "is_autocast_enabled", no_device_argument)
            warnings.simplefilter("ignore", DeprecationWarning)  # newer torch: old query
            seen.append(_autocast.active(x))
    assert seen == [None, "cpu"]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_binary_cross_entropy_refused_under_cuda_autocast(dtype: torch.dtype) -> None:
    p, t = torch.rand(4, 3, device="cuda"), torch.rand(4, 3, device="cuda")
    errors = []
    for fn in (TF.binary_cross_entropy, F.binary_cross_entropy, torch.nn.BCELoss(), RN.BCELoss()):
        with torch.autocast("cuda", dtype=dtype), pytest.raises(RuntimeError) as e:
            fn(p, t)
        errors.append(e.type)
    assert errors == [RuntimeError] * 4
    with torch.autocast("cuda", dtype=dtype):  # CPU tensors: CUDA autocast does not apply
        torch.testing.assert_close(
            F.binary_cross_entropy(p.cpu(), t.cpu()), TF.binary_cross_entropy(p.cpu(), t.cpu())
        )
