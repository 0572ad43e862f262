"""Shared test setup: hypothesis profiles and the device fixture.

Profiles (pick with REIMPL_HYPOTHESIS_PROFILE): ``dev`` (default, fast), ``ci``
(derandomized and bounded, what ``make test`` uses), ``quick`` (derandomized, few examples:
the reruns of the suite on the other torch versions and under the sanitizers, which look
for version drift and memory errors, not for new inputs), ``thorough`` (many examples, for
a GPU box or a long run).
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

_common = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("dev", max_examples=15, **_common)
settings.register_profile("ci", max_examples=25, derandomize=True, database=None, **_common)
settings.register_profile("quick", max_examples=8, derandomize=True, database=None, **_common)
settings.register_profile("thorough", max_examples=400, **_common)
settings.load_profile(os.environ.get("REIMPL_HYPOTHESIS_PROFILE", "dev"))

CUDA = torch.cuda.is_available()
if not CUDA:
    # Triton kernels are defined in interpreter mode from the start, so the kernel tests can
    # run them on CPU tensors (they opt in with REIMPL_TRITON_CPU=1; nothing else does).
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(params=DEVICES, scope="session")
def device(request: pytest.FixtureRequest) -> str:
    return request.param


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CUDA:
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
