"""Normalization parity: the NORMALIZATION_CASES table against torch (layer, RMS and group
norm, functional and modules, channels-last, under autocast), and bad input."""

from __future__ import annotations

import pytest
import torch

from reimpl_parity.cases.normalization import NORMALIZATION_CASES, NORMALIZATION_ERROR_CASES
from reimpl_parity.harness import check_case

PARAMS = [
    pytest.param(c, dt, id=f"{c.name}-{str(dt)[6:]}")
    for c in NORMALIZATION_CASES
    for dt in c.dtypes
]


@pytest.mark.parametrize(("case", "dtype"), PARAMS)
def test_normalization_parity(case, dtype: torch.dtype, device: str) -> None:
    if device.split(":")[0] not in case.devices:
        pytest.skip(f"{case.name} runs on {case.devices} only")
    check_case(case, dtype, device)


@pytest.mark.parametrize("case", NORMALIZATION_ERROR_CASES, ids=lambda c: c.name)
def test_normalization_bad_input(case) -> None:
    check_case(case, torch.float32, "cpu", max_examples=1)
