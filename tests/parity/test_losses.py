"""Loss parity: the LOSS_CASES table against torch, every dtype, CPU and CUDA -- plain,
under torch.autocast (CPU bfloat16/float16 here; CUDA float16/bfloat16 rows are marked
``cuda``), and with inputs of mixed dtypes -- and bad input (LOSS_ERROR_CASES)."""

from __future__ import annotations

import pytest
import torch

from reimpl_parity.cases.losses import LOSS_CASES, LOSS_ERROR_CASES
from reimpl_parity.harness import check_case

PARAMS = [pytest.param(c, dt, id=f"{c.name}-{str(dt)[6:]}") for c in LOSS_CASES for dt in c.dtypes]


@pytest.mark.parametrize(("case", "dtype"), PARAMS)
def test_loss_parity(case, dtype: torch.dtype, device: str) -> None:
    if device.split(":")[0] not in case.devices:
        pytest.skip(f"{case.name} runs on {case.devices} only")
    check_case(case, dtype, device)


@pytest.mark.parametrize("case", LOSS_ERROR_CASES, ids=lambda c: c.name)
def test_loss_bad_input(case) -> None:
    check_case(case, torch.float32, "cpu", max_examples=1)
