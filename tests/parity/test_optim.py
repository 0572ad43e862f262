"""Optimizer parity: OPTIM_CASES trajectories against torch, every dtype, CPU and CUDA.

Each example is a whole 20+ step trajectory (compared after every step), so these tests
draw half of the profile's ``max_examples`` (at least 5) to stay within the suite's
time budget; ``reimpl check optim`` runs the same table at full size.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings

from reimpl_parity.cases.optim import OPTIM_CASES
from reimpl_parity.harness import check_case

PARAMS = [
    pytest.param(
        c,
        dt,
        id=f"{c.name}-{str(dt)[6:]}",
        marks=[pytest.mark.cuda] if "cpu" not in c.devices else [],
    )
    for c in OPTIM_CASES
    for dt in c.dtypes
]


@pytest.mark.parametrize(("case", "dtype"), PARAMS)
def test_optim_parity(case, dtype: torch.dtype, device: str) -> None:
    if device not in case.devices:
        pytest.skip(f"{case.name} runs on {case.devices} only")
    check_case(case, dtype, device, max_examples=max(5, settings().max_examples // 2))
