"""The exponential weighted average: against a plain loop and against weight EMA."""

from __future__ import annotations

import pytest
import torch
import torch.optim.swa_utils as TS
from hypothesis import given
from hypothesis import strategies as st

import reimpl.optim.swa_utils as RS
from reimpl.optim import exponential_weighted_average as ewa

series = st.lists(st.floats(-1e3, 1e3), max_size=60)
betas = st.sampled_from([0.0, 0.5, 0.9, 0.99]) | st.floats(0.0, 0.999)


def loop(ys: list[float], beta: float, bias_correction: bool = False) -> list[float]:
    out, s = [], 0.0
    for t, y in enumerate(ys, start=1):
        s = y if (t == 1 and not bias_correction) else beta * s + (1 - beta) * y
        out.append(s / (1 - beta**t) if bias_correction else s)
    return out


@given(ys=series, beta=betas, bc=st.booleans())
def test_equals_python_loop(ys: list[float], beta: float, bc: bool) -> None:
    assert ewa(ys, beta, bias_correction=bc).tolist() == loop(ys, beta, bc)


@given(ys=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=40), beta=betas)
def test_equals_weight_ema(ys: list[float], beta: float) -> None:
    """AveragedModel + get_ema_avg_fn (ours and torch's) on a scalar 'parameter' fed ys."""
    expected = ewa(ys, beta)
    for mod in (RS, TS):
        p = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        holder = torch.nn.ParameterList([p])
        avg = mod.AveragedModel(holder, avg_fn=mod.get_ema_avg_fn(beta))
        multi = mod.AveragedModel(holder, multi_avg_fn=mod.get_ema_multi_avg_fn(beta))
        got, got_multi = [], []
        for y in ys:
            with torch.no_grad():
                p.fill_(y)
            avg.update_parameters(holder)
            multi.update_parameters(holder)
            got.append(float(avg.module[0].detach()))
            got_multi.append(float(multi.module[0].detach()))
        assert got == expected.tolist()  # same recurrence, same operation order
        # the foreach path computes lerp(S, Y, 1 − β) = S + (1 − β)(Y − S): rounding differs
        torch.testing.assert_close(torch.tensor(got_multi, dtype=torch.float64), expected)


def test_seed_and_bias_correction_agree_where_documented() -> None:
    ys = [3.0, 5.0, 4.0, 10.0]
    for bc in (False, True):
        assert ewa(ys, 0.9, bias_correction=bc)[0] == 3.0  # S_1 = Y_1 either way
        assert ewa([7.0] * 5, 0.9, bias_correction=bc).tolist() == pytest.approx([7.0] * 5)
    assert ewa(ys, 0.0).tolist() == ys
    assert ewa(ys, 1.0).tolist() == [3.0] * 4
    # the bias-corrected average discounts the seed: it differs from the seeded one later
    assert ewa(ys, 0.5)[1] == 4.0 and ewa(ys, 0.5, bias_correction=True)[1] == pytest.approx(13 / 3)


def test_dtypes_and_shapes() -> None:
    assert ewa(torch.arange(4, dtype=torch.float32), 0.5).dtype == torch.float32
    assert ewa(torch.arange(4), 0.5).dtype == torch.float64
    assert ewa([], 0.5).shape == (0,)
    with pytest.raises(ValueError, match="1-D"):
        ewa(torch.zeros(2, 2), 0.5)
    for beta, bc in ((-0.1, False), (1.1, False), (1.0, True)):
        with pytest.raises(ValueError, match="beta"):
            ewa([1.0], beta, bias_correction=bc)
