"""Regularizer parity: the REGULARIZER_CASES table against torch (dropout bit-identical on
CPU incl. the generator state; batch norm functional and modules), and bad input."""

from __future__ import annotations

import pytest
import torch

from reimpl_parity.cases.regularizers import REGULARIZER_CASES, REGULARIZER_ERROR_CASES
from reimpl_parity.harness import check_case

PARAMS = [
    pytest.param(c, dt, id=f"{c.name}-{str(dt)[6:]}") for c in REGULARIZER_CASES for dt in c.dtypes
]


@pytest.mark.parametrize(("case", "dtype"), PARAMS)
def test_regularizer_parity(case, dtype: torch.dtype, device: str) -> None:
    if device.split(":")[0] not in case.devices:
        pytest.skip(f"{case.name} runs on {case.devices} only")
    check_case(case, dtype, device)


@pytest.mark.parametrize("case", REGULARIZER_ERROR_CASES, ids=lambda c: c.name)
def test_regularizer_bad_input(case) -> None:
    check_case(case, torch.float32, "cpu", max_examples=1)
