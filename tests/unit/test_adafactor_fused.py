"""Adafactor's ``fused=True`` on the CPU: one C call per step (``cpu_adafactor.c``).

Held to torch's multi-tensor Adafactor (torch has no fused one) at ``assert_close``'s
default tolerances on params of ordinary scale, with both kinds of state (factored
matrices split by rows or whole per thread, vectors, scalars) in one group; the parity rows
(``Adafactor-fused``) add hypothesis' draws. A factor state that does not fit its param is
refused before the kernel sees its address, on the C path and on the widened one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

import reimpl.optim as ours
from reimpl.kernels import cpu_fused
from reimpl.optim import adafactor

pytestmark = pytest.mark.skipif(cpu_fused.library() is None, reason="no C compiler")

# a vector, a scalar, one matrix split by rows over the threads, a batch of small matrices
# taken whole per thread (conv-like), a 3-d batch of two, a matrix of one row
SHAPES = [(37,), (), (64, 33), (300, 3, 3), (2, 17, 40), (1, 50)]
OPTIONS: list[dict[str, Any]] = [
    {},
    {"weight_decay": 0.1, "maximize": True},
    {"lr": 0.1, "eps": (1e-30, 0.0), "d": 2.0, "beta2_decay": -0.5},
    {"lr": torch.tensor(0.05), "eps": (1e-3, 0.1), "beta2_decay": 0.0},
]


def _params(dtype: torch.dtype, shapes: list[tuple[int, ...]] = SHAPES) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


def _grads(step: int, params: list[torch.Tensor], scale: float = 1.0) -> Iterator[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        yield (torch.randn(p.shape, generator=g, dtype=torch.float64) * scale).to(p.dtype)


def _train(make: Any, base: list[torch.Tensor], steps: int, scale: float = 1.0, **kw: Any) -> Any:
    params = [torch.nn.Parameter(b.clone()) for b in base]
    opt = make(params, **kw)
    for step in range(steps):
        for p, g in zip(params, _grads(step, params, scale), strict=True):
            p.grad = g
        opt.step()
    return params, opt


def _assert_like_torch(base: list[torch.Tensor], steps: int = 12, **kwargs: Any) -> None:
    mine, opt = _train(ours.Adafactor, base, steps, fused=True, **kwargs)
    theirs, ref = _train(torch.optim.Adafactor, base, steps, foreach=True, **kwargs)
    for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        torch.testing.assert_close(a, b, msg=lambda m, i=i: f"param {i}: {m}")
        assert opt.state[a].keys() == ref.state[b].keys()
        for key, v in ref.state[b].items():
            torch.testing.assert_close(opt.state[a][key], v, msg=lambda m, k=key: f"{k}: {m}")


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every C kernel call (family, tensors), and the widened multi-tensor form's calls."""
    calls: list[tuple[str, int]] = []
    real_run, real_multi = cpu_fused.Prepared.run, adafactor._multi_tensor_adafactor

    def run(self: cpu_fused.Prepared, family: str, *args: Any, **kwargs: Any) -> None:
        calls.append((family, len(self.roles[0][1] or ())))
        real_run(self, family, *args, **kwargs)

    def multi(*args: Any, **kwargs: Any) -> None:
        calls.append(("multi-tensor form", 0))
        real_multi(*args, **kwargs)

    monkeypatch.setattr(cpu_fused.Prepared, "run", run)
    monkeypatch.setattr(adafactor, "_multi_tensor_adafactor", multi)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_step_is_one_c_call(dtype: torch.dtype, kernel_calls: list) -> None:
    _assert_like_torch(_params(dtype), steps=3)
    assert kernel_calls == [("adafactor", len(SHAPES))] * 3


@pytest.mark.parametrize("kwargs", OPTIONS, ids=range(len(OPTIONS)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_matches_torch_foreach(dtype: torch.dtype, kwargs: dict[str, Any]) -> None:
    _assert_like_torch(_params(dtype), **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_matches_torch_where_the_eps_clamps_act(dtype: torch.dtype) -> None:
    """Grads ~1e-3 with eps1 = 1e-3: the row means' mean is held at eps1, and the
    estimate at eps1^2 where it falls below."""
    _assert_like_torch(_params(dtype), scale=1e-3, eps=(1e-3, 1e-3))


def test_16_bit_params_take_the_widened_form(kernel_calls: list) -> None:
    base, eps = _params(torch.bfloat16, [(5, 4), (6,)]), (1e-8, 1e-3)  # (eps1: not by dtype)
    mine, _ = _train(ours.Adafactor, base, 1, fused=True, eps=eps)
    assert kernel_calls == [("multi-tensor form", 0)]
    wide, _ = _train(torch.optim.Adafactor, [b.float() for b in base], 1, foreach=True, eps=eps)
    for a, b in zip(mine, wide, strict=True):  # what a kernel computes: float32, rounded once
        torch.testing.assert_close(a, b.bfloat16(), rtol=0, atol=0)


def test_a_group_of_two_dtypes_steps_each_in_its_own(kernel_calls: list) -> None:
    """The C kernels run one dtype per call: a group mixing float32 and float64 takes the
    multi-tensor form (which batches by dtype), never one kernel over both (which would
    read a float32 buffer as doubles)."""
    base = [*_params(torch.float64, [(4, 3)]), *_params(torch.float32, [(5,)])]
    _assert_like_torch(base, steps=3)
    assert kernel_calls == [("multi-tensor form", 0)] * 3
    p, g = [torch.zeros(4), torch.zeros(8, dtype=torch.float64)], [torch.zeros(4)] * 2
    assert cpu_fused.prepare("t", [("param", p), ("grad", g)]) is None
    with pytest.raises(RuntimeError, match="cannot run"):
        cpu_fused.prepare("t", [("param", p), ("grad", g)], strict=True)


def test_a_strided_factor_takes_the_multi_tensor_form(kernel_calls: list) -> None:
    """A non-contiguous factor (valid state, which the kernel cannot walk) is computed by
    the multi-tensor form, as torch computes it."""
    base = _params(torch.float32, [(6, 5), (4,)])
    runs = []
    for make, kw in ((ours.Adafactor, {"fused": True}), (torch.optim.Adafactor, {"foreach": True})):
        params, opt = _train(make, base, 2, **kw)
        strided = torch.zeros(6, 2)[:, :1]
        assert not strided.is_contiguous()
        opt.state[params[0]]["row_var"] = strided.copy_(opt.state[params[0]]["row_var"])
        for p, g in zip(params, _grads(2, params), strict=True):
            p.grad = g
        opt.step()
        runs.append(params)
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b)
    assert kernel_calls == [("adafactor", 2)] * 2 + [("multi-tensor form", 0)]


def test_gradscaler_hand_over_unscales_in_the_kernel(kernel_calls: list) -> None:
    """With GradScaler's scale handed over, the first sweep divides the grads by it (and
    stores them so), as GradScaler's own unscale before torch's step would."""
    base = _params(torch.float32)
    params = [torch.nn.Parameter(b.clone()) for b in base]
    opt = ours.Adafactor(params, fused=True)
    theirs = [torch.nn.Parameter(b.clone()) for b in base]
    ref = torch.optim.Adafactor(theirs, foreach=True)
    for step in range(3):
        for p, q, g in zip(params, theirs, _grads(step, params), strict=True):
            p.grad, q.grad = g * 1024, g.clone()
        opt.grad_scale, opt.found_inf = torch.tensor(1024.0), torch.tensor(0.0)
        opt.step()
        ref.step()
        for p, q in zip(params, theirs, strict=True):
            torch.testing.assert_close(p.grad, q.grad)
            torch.testing.assert_close(p, q)
    assert kernel_calls == [("adafactor", len(SHAPES))] * 3


def test_an_empty_param_raises_as_torch() -> None:
    """torch's step divides the param's norm by sqrt(numel): ZeroDivisionError."""
    for make, kw in ((ours.Adafactor, {"fused": True}), (torch.optim.Adafactor, {"foreach": True})):
        p = torch.nn.Parameter(torch.zeros(0, 3))
        p.grad = torch.zeros(0, 3)
        with pytest.raises(ZeroDivisionError):
            make([p], **kw).step()


# ---------------------------------------------------------------- malformed factors


def _bad(p: torch.Tensor, key: str, how: str) -> torch.Tensor:
    rows, cols = (*p.shape[:-1], 1), (*p.shape[:-2], 1, p.shape[-1])
    shape = {"row_var": rows, "col_var": cols, "variance": p.shape}[key]
    if how == "transposed shape":  # as many elements, another shape
        return torch.zeros(shape[::-1], dtype=p.dtype)
    if how == "too small":
        return torch.zeros(shape[:-1], dtype=p.dtype)
    if how == "like the param":  # torch's usual state shape, far larger than a factor
        return torch.zeros_like(p)
    if how == "float64":
        return torch.zeros(shape, dtype=torch.float64)
    assert how == "sparse"
    return torch.zeros(shape, dtype=p.dtype).to_sparse()


CASES = [
    ("row_var", "transposed shape"),
    ("row_var", "too small"),
    ("col_var", "like the param"),
    ("col_var", "float64"),
    ("col_var", "sparse"),
    ("variance", "too small"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("key", "how"), CASES, ids=[f"{k}-{h}" for k, h in CASES])
def test_malformed_factor_state_is_refused_before_the_kernel(
    key: str, how: str, dtype: torch.dtype, kernel_calls: list
) -> None:
    """A checkpoint whose factors do not fit their param raises RuntimeError naming it, on
    the C path (float32) and the widened one (bfloat16), before anything is stepped."""
    params = [torch.nn.Parameter(torch.randn(s).to(dtype)) for s in [(3,), (6, 5), (4,)]]
    opt = ours.Adafactor(params, fused=True)
    for p in params:
        p.grad = torch.randn(p.shape).to(dtype)
    opt.step()
    kernel_calls.clear()
    target = params[1] if key != "variance" else params[2]
    opt.state[target][key] = _bad(target, key, how)
    before = [p.detach().clone() for p in params]
    index = 1 if key != "variance" else 2
    with pytest.raises(RuntimeError, match=rf"state '{key}' of parameter {index}"):
        opt.step()
    assert kernel_calls == []
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p.detach(), b)


def test_a_missing_factor_is_refused_as_torch_refuses_it() -> None:
    p = torch.nn.Parameter(torch.randn(4, 3))
    p.grad = torch.randn(4, 3)
    opt = ours.Adafactor([p], fused=True)
    opt.step()
    del opt.state[p]["col_var"]
    with pytest.raises(AssertionError, match="'col_var'"):
        opt.step()


def test_factors_sharing_memory_with_the_param_are_refused() -> None:
    p = torch.nn.Parameter(torch.randn(4, 3))
    p.grad = torch.randn(4, 3)
    opt = ours.Adafactor([p], fused=True)
    opt.step()
    opt.state[p]["row_var"] = p.detach().view(-1)[:4].view(4, 1)
    with pytest.raises(RuntimeError, match="shares memory"):
        opt.step()
