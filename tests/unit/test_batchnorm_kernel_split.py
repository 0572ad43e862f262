"""The batch norm C kernels in SyncBatchNorm's two extra modes, in one process.

A batch is split in two as two ranks would hold it. Each part's statistics come from a
training pass without output; they are combined (parallel variance); each part's output
is the evaluation pass with the combined statistics, its sums the backward with a unit
invstd, and its input gradient the backward given the summed sums. Everything is compared
with torch's batch norm over the whole batch (the multi-process run of the same code is
in tests/distributed). Also: the modes' argument checks, and the operand gate on ``sums``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

from reimpl.kernels import cpu_batch_norm as K
from reimpl_parity.compare import TOLERANCES, compare

pytestmark = pytest.mark.skipif(
    K._functions() is None, reason="no C compiler: the kernels are not built"
)

_CASES = {
    "planes": ((7, 4, 5, 6), torch.contiguous_format),
    "channels_last": ((7, 4, 5, 6), torch.channels_last),
    "rows (N, C)": ((9, 5), torch.contiguous_format),
    "planes, threaded": ((12, 3, 40, 40), torch.contiguous_format),
}


def _parts(x: torch.Tensor, fmt: torch.memory_format) -> list[torch.Tensor]:
    return [p.contiguous(memory_format=fmt) for p in (x[:3], x[3:])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(_CASES))
def test_split_batch_matches_torch_over_the_whole(case: str, dtype: torch.dtype) -> None:
    shape, fmt = _CASES[case]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=dtype) * 3 + 1
    dy = torch.randn(shape, generator=g, dtype=dtype)
    w = torch.rand(shape[1], generator=g, dtype=dtype) + 0.5
    b = torch.randn(shape[1], generator=g, dtype=dtype)
    eps = 1e-5
    # torch over the whole batch: the oracle
    xt, wt, bt = (t.clone().requires_grad_() for t in (x, w, b))
    yt = TF.batch_norm(xt, None, None, wt, bt, training=True, eps=eps)
    yt.backward(dy)

    xs, dys = _parts(x, fmt), _parts(dy, fmt)
    ats = [K.layout(p) for p in xs]
    assert all(at is not None for at in ats)
    stats = []
    for p, at in zip(xs, ats, strict=True):
        y, m, _, m2 = K.forward(p, None, None, None, None, at, True, eps, output=False)
        assert y is None and m is not None and m2 is not None
        stats.append((m.double(), m2.double(), at.n * at.s))
    total = sum(n for _, _, n in stats)
    mean = sum(m * n for m, _, n in stats) / total
    m2 = sum(v + n * (m - mean) ** 2 for m, v, n in stats)
    mean, var = mean.to(dtype), (m2 / total).to(dtype)

    sums = torch.zeros(2 * shape[1], dtype=dtype)
    local = []
    for p, d, at in zip(xs, dys, ats, strict=True):
        ones = torch.ones(shape[1], dtype=dtype)
        _, sdot, sdy = K.backward(p, d, None, mean, ones, at, True, (False, True, True))
        assert sdot is not None and sdy is not None
        local.append((sdy, sdot))
        sums += torch.cat([sdy, sdot])
    rtol, atol = TOLERANCES[dtype]
    sum_atol = atol * 50  # sums of ~10^3..10^4 terms, in another order than torch's
    for i, (p, d, at) in enumerate(zip(xs, dys, ats, strict=True)):
        y, _, invstd, _ = K.forward(p, w, b, mean, var, at, False, eps)
        assert y is not None and invstd is not None
        part = slice(0, 3) if i == 0 else slice(3, None)
        compare(y, yt[part], rtol=rtol, atol=atol, what=f"{case} output part {i}")
        assert y.is_contiguous(memory_format=fmt)
        dx, dw, db = K.backward(p, d, w, mean, invstd, at, True, (True, False, False), sums, total)
        assert dw is None and db is None and dx is not None
        compare(dx, xt.grad[part], rtol=rtol, atol=atol, what=f"{case} input grad part {i}")
    sdy = sum(s for s, _ in local)
    sdot = sum(s for _, s in local)
    compare(sdy, bt.grad, rtol=rtol, atol=sum_atol, what=f"{case} sum dy")
    compare(sdot * invstd, wt.grad, rtol=rtol, atol=sum_atol, what=f"{case} sum dy x-hat")


def _args() -> tuple[torch.Tensor, ...]:
    x, dy = torch.randn(4, 3, 2), torch.randn(4, 3, 2)
    return x, dy, torch.zeros(3), torch.ones(3)


def test_statistics_alone_only_in_training() -> None:
    x = torch.randn(4, 3, 2)
    at = K.layout(x)
    with pytest.raises(ValueError, match="only training"):
        K.forward(x, None, None, torch.zeros(3), torch.ones(3), at, False, 1e-5, output=False)


@pytest.mark.parametrize(
    ("training", "need", "total"),
    [
        (False, (True, False, False), 8),
        (True, (True, True, False), 8),
        (True, (True, False, False), 0),
    ],
    ids=["eval", "with_dweight", "zero_total"],
)
def test_given_sums_only_for_a_training_input_gradient(
    training: bool, need: tuple[bool, bool, bool], total: int
) -> None:
    x, dy, mean, invstd = _args()
    at = K.layout(x)
    with pytest.raises(ValueError, match="given sums"):
        K.backward(x, dy, None, mean, invstd, at, training, need, torch.zeros(6), total)


@pytest.mark.parametrize(
    "sums",
    [torch.zeros(5), torch.zeros(6, dtype=torch.float64), torch.zeros(12)[::2]],
    ids=["short", "dtype", "strided"],
)
def test_gate_refuses_malformed_sums(sums: torch.Tensor) -> None:
    x, dy, mean, invstd = _args()
    at = K.layout(x)
    with pytest.raises(RuntimeError, match="sums"):
        K.backward(x, dy, None, mean, invstd, at, True, (True, False, False), sums, 8)
