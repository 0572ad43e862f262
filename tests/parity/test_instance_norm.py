"""Instance norm, local response norm and lazy norm parity: the INSTANCE_NORM_CASES table
against torch (functional forms, modules over train/eval steps, state_dicts both ways,
lazy modules materializing, autocast), and bad input."""

from __future__ import annotations

import pytest
import torch

from reimpl_parity.cases.instance_norm import INSTANCE_NORM_CASES, INSTANCE_NORM_ERROR_CASES
from reimpl_parity.harness import check_case

PARAMS = [
    pytest.param(c, dt, id=f"{c.name}-{str(dt)[6:]}")
    for c in INSTANCE_NORM_CASES
    for dt in c.dtypes
]


@pytest.mark.parametrize(("case", "dtype"), PARAMS)
def test_instance_norm_parity(case, dtype: torch.dtype, device: str) -> None:
    if device.split(":")[0] not in case.devices:
        pytest.skip(f"{case.name} runs on {case.devices} only")
    check_case(case, dtype, device)


@pytest.mark.parametrize("case", INSTANCE_NORM_ERROR_CASES, ids=lambda c: c.name)
def test_instance_norm_bad_input(case) -> None:
    check_case(case, torch.float32, "cpu", max_examples=1)
