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

import importlib.util
import math
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


@pytest.fixture(scope="module")
def fsdp_and_zero_gloo(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """One run of the optimizer scenarios for the tests below (start-up dominates)."""
    return _run("fsdp_and_zero", tmp_path_factory.mktemp("fsdp_and_zero"))


@pytest.mark.skipif(not HAVE_OPTIMIZERS, reason="reimpl.optim optimizers not merged yet")
def test_fsdp2_and_zero_gloo(fsdp_and_zero_gloo: list[dict]) -> None:
    names = fsdp_and_zero_gloo[0]["checks"]
    assert any(n.startswith("fsdp/adam_fused/") for n in names)
    assert any(n.startswith("zero/adam/consolidated") for n in names)


#: fused=True cases of the FSDP2 scenario whose C kernel must run on the shards: torch's
#: fused families, and some that only reimpl fuses
FUSED_ON_SHARDS = (
    *("adam_fused", "adamw_fused", "adamw_fused_shard_dim1", "adamw_fused_amsgrad_maximize"),
    "adagrad_fused",
    *("sgd_fused", "sgd_fused_nesterov_decay", "rmsprop_fused", "nadam_fused", "radam_fused"),
    *("adamax_fused", "adadelta_fused", "asgd_fused"),
)


@pytest.mark.skipif(not HAVE_OPTIMIZERS, reason="reimpl.optim optimizers not merged yet")
def test_fused_steps_run_the_kernels_on_fsdp2_local_shards(
    fsdp_and_zero_gloo: list[dict],
) -> None:
    """Each case's params and state after 3 steps (and after a checkpoint round trip) are
    torch's (checked in the workers, failures fail the fixture's run); here: every step of
    every case was seen running its C kernel on each rank's plain local shards (under
    GradScaler too, which hands the kernel its scale), and
    Adafactor's (not per element) was seen not to; replicated placements, HSDP's 2-D mesh
    and state sharded otherwise than its param keep the DTensor fallback."""
    for rank, result in enumerate(fsdp_and_zero_gloo):
        names = result["checks"]
        for case in (*FUSED_ON_SHARDS, "grad_scaler/adam", "grad_scaler/sgd"):
            for step in range(3):
                name = f"fsdp/{case}/step{step}/kernel_on_local_shards"
                assert names.get(name) == "", f"rank {rank}: {name}: {names.get(name)}"
        assert names.get("fsdp/adafactor_fused/not_on_local_shards") == ""
        rules = [n for n in names if n.startswith("fsdp/local_rules/")]
        assert "fsdp/local_rules/fsdp2_shards_go_local" in rules
        assert len([n for n in rules if n.endswith("_keeps_the_fallback")]) == 5, rules


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


@pytest.mark.skipif(not HAVE_OPTIMIZERS, reason="reimpl.optim optimizers not merged yet")
@pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or torch.cuda.is_available(),
    reason="the Triton interpreter on CPU tensors (CUDA runs Triton natively: the nccl test)",
)
def test_fsdp2_fused_steps_triton_interpreter(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The FSDP2 scenario with the Triton bindings (under the interpreter) as the fused
    path: each step's Triton launch is seen on the local shards, same results as torch."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("REIMPL_TRITON_CPU", "1")
    monkeypatch.setenv("REIMPL_TRITON_BOUNDS", "1")  # every load and store checked
    results = _run("fsdp", tmp_path)
    assert all(r["triton_bounds_checked"] for r in results)
    names = results[0]["checks"]
    for case in FUSED_ON_SHARDS:
        assert names.get(f"{case}/step2/kernel_on_local_shards") == "", case


@pytest.mark.skipif(not HAVE_OPTIMIZERS, reason="reimpl.optim optimizers not merged yet")
def test_fsdp2_fused_step_benchmark_runs() -> None:
    """The FSDP2 step benchmark (bench_dist) at a tiny size: two positive times, a ratio."""
    from reimpl_parity.bench_dist import bench_fsdp_fused_step

    times = bench_fsdp_fused_step("SGD", width=16, layers=2, warmup=1, reps=3, timeout=120)
    assert all(math.isfinite(v) and v > 0 for v in times), times
    with pytest.raises(ValueError, match="Rprop"):
        bench_fsdp_fused_step("Rprop")


def test_sync_batchnorm_benchmark_runs() -> None:
    """The SyncBatchNorm step benchmark (bench_dist) at a tiny size: two positive times."""
    from reimpl_parity.bench_dist import bench_sync_batchnorm

    times = bench_sync_batchnorm((2, 3, 4, 4), warmup=1, reps=3, timeout=120)
    assert all(math.isfinite(v) and v > 0 for v in times), times
