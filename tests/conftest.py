"""Shared test setup: hypothesis profiles and the device fixture.

Profiles (pick with REIMPL_HYPOTHESIS_PROFILE): ``dev`` (default, fast), ``ci``
(derandomized and bounded, what ``make test`` uses), ``quick`` (derandomized, few examples:
the reruns of the suite on the other torch versions and under the sanitizers, which look
for version drift and memory errors, not for new inputs), ``thorough`` (many examples, for
a GPU box or a long run).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

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
TRITON_INTERPRETED = (
    os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton") is not None
)


@pytest.fixture(autouse=True)
def _triton_bounds() -> Iterator[None]:
    """Wherever the interpreter runs a Triton kernel, every load and store it makes is
    checked against the tensors it may touch (``reimpl_parity.triton_bounds``): an access
    outside them fails the test instead of reading someone else's memory."""
    if not TRITON_INTERPRETED:
        yield
        return
    from reimpl_parity.triton_bounds import bounds_checked

    with bounds_checked():
        yield


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


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """With ``REIMPL_FAILURE_LOG`` set, each failure's report is appended to that file as it
    happens (also from xdist workers' reports): a run cut off by a time limit (the GPU
    session's) still leaves every failure seen so far."""
    path = os.environ.get("REIMPL_FAILURE_LOG")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # (the controller gets each worker's report too: one writer, one entry)
    if path and report.failed:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"===== {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")
