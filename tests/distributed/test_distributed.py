"""reimpl under torch.distributed: 2 processes per run, started by the test.

gloo over 127.0.0.1 on CPU always; NCCL on 2 GPUs when there are 2 (marked ``cuda``).
Every run is bounded (:func:`reimpl_parity.distributed.launch` kills it on overrun) and
groups many checks, because process start-up dominates. What each scenario compares is
described in :mod:`reimpl_parity.dist_scenarios`; in short:

* SyncBatchNorm against torch's BatchNorm over the concatenated global batch: torch's own
  ``SyncBatchNorm`` raises for CPU tensors, and it computes the same statistics (on GPUs it
  is compared directly as well);
* DDP training with reimpl's losses/regularizers/schedulers/optimizers against torch's;
* reimpl's optimizers on FSDP2 (DTensor parameters) and under ZeroRedundancyOptimizer.
"""

from __future__ import annotations

import pathlib

import pytest
import torch
import torch.distributed as dist

import reimpl.optim
from reimpl_parity.distributed import failures, launch

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed"
)

HAVE_OPTIMIZERS = all(
    hasattr(reimpl.optim, n) for n in ("SGD", "Adam", "AdamW", "Adagrad", "RMSprop")
)
TWO_GPUS = pytest.mark.skipif(
    torch.cuda.device_count() < 2 or not dist.is_nccl_available(), reason="needs 2 GPUs + NCCL"
)


def _run(scenario: str, tmp_path: pathlib.Path, backend: str = "gloo") -> list[dict]:
    results = launch(scenario, tmp_path, world_size=2, backend=backend, timeout=150)
    bad = failures(results)
    assert not bad, f"{len(bad)} failed checks:\n" + "\n".join(bad)
    return results


def test_syncbn_and_ddp_gloo(tmp_path: pathlib.Path) -> None:
    results = _run("syncbn_and_ddp", tmp_path)
    names = results[0]["checks"]
    assert len(names) > 150
    assert any(n.startswith("empty_rank/") for n in names)
    assert any(n.startswith("ddp_syncbn/") for n in names)
    assert results[0]["our_optimizers"] is HAVE_OPTIMIZERS


@pytest.mark.skipif(not HAVE_OPTIMIZERS, reason="reimpl.optim optimizers not merged yet")
def test_fsdp2_and_zero_gloo(tmp_path: pathlib.Path) -> None:
    results = _run("fsdp_and_zero", tmp_path)
    names = results[0]["checks"]
    assert any(n.startswith("fsdp/adam_fused/") for n in names)
    assert any(n.startswith("zero/adam/consolidated") for n in names)


@pytest.mark.cuda
@TWO_GPUS
def test_syncbn_and_ddp_nccl(tmp_path: pathlib.Path) -> None:
    results = _run("syncbn_and_ddp", tmp_path, backend="nccl")
    assert any("vs_torch_sync" in n for n in results[0]["checks"])


@pytest.mark.cuda
@TWO_GPUS
@pytest.mark.skipif(not HAVE_OPTIMIZERS, reason="reimpl.optim optimizers not merged yet")
def test_fsdp2_and_zero_nccl(tmp_path: pathlib.Path) -> None:
    _run("fsdp_and_zero", tmp_path, backend="nccl")


def test_launcher_kills_a_hung_group(tmp_path: pathlib.Path) -> None:
    """A rank that never joins makes the other wait in init: the launcher times out."""
    from reimpl_parity.distributed import WorkerError

    with pytest.raises(WorkerError, match="timed out"):
        launch("hang", tmp_path, world_size=2, timeout=6)


def test_launcher_stops_the_group_when_a_rank_fails(tmp_path: pathlib.Path) -> None:
    """Rank 1 raises; rank 0, blocked in a barrier, is killed at once (not at the timeout)."""
    import time

    from reimpl_parity.distributed import WorkerError

    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"failed(.|\n)*rank 1 fails on purpose"):
        launch("fail", tmp_path, world_size=2, timeout=100)
    assert time.monotonic() - start < 60
