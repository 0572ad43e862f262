"""Timed work on 2 gloo processes: one ``fused=True`` optimizer step on FSDP2 shards, and
one SyncBatchNorm training step, reimpl against torch.

FSDP2 holds every parameter as a DTensor sharded over the ranks, and the optimizer step is
local to each rank (no collective). reimpl's fused step runs its C kernel (Triton on GPUs)
on each rank's local shard; torch's runs its fused kernel where it has a DTensor rule for
it (Adam, AdamW) and its foreach path otherwise (its fused SGD and Adagrad have none). This
row says what that costs against torch on a sharded model.

:func:`bench_fsdp_fused_step` starts 2 gloo processes (:func:`reimpl_parity.distributed.
launch`); each builds the same model twice (ours, torch's optimizer), makes gradients once,
then times ``step()`` A B A B ... (who goes first alternates), the ranks lined up by a
barrier before each call. A pair's time is the slower rank's (the step ends when both
have); the result is the medians over pairs and the median of the per-pair ratios, as in
:mod:`reimpl_parity.bench`. Gloo runs on the CPU, so this is a CPU row.

torch's SyncBatchNorm has no CPU path (it raises for CPU tensors), so reimpl's
SyncBatchNorm (statistics and input-gradient sums reduced over both ranks) is timed
against torch's BatchNorm2d on each rank's own batch, unsynchronized: what the
synchronization and reimpl's kernels cost together, against the work without it.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from reimpl_parity.bench import Result, row_line

#: per optimizer: its hyperparameters and torch's path on DTensors
CONFIGS: dict[str, tuple[dict[str, Any], str]] = {
    "Adam": ({"lr": 1e-3}, "fused"),
    "AdamW": ({"lr": 1e-3, "weight_decay": 0.01}, "fused"),
    "SGD": ({"lr": 0.01, "momentum": 0.9}, "foreach"),
    "Adagrad": ({"lr": 0.01}, "foreach"),
    "RMSprop": ({"lr": 0.01}, "foreach"),
    "NAdam": ({"lr": 2e-3}, "foreach"),
}
_ENV = "REIMPL_BENCH_DIST_SPEC"


class StepTimes(NamedTuple):
    """Medians over interleaved pairs (ms) and the median of per-pair ratios."""

    reimpl_ms: float
    torch_ms: float
    ratio: float


def bench_fsdp_fused_step(
    optimizer: str = "Adam",
    *,
    width: int = 1024,
    layers: int = 4,
    warmup: int = 3,
    reps: int = 15,
    timeout: float = 300.0,
) -> StepTimes:
    """Time one fused step of ``optimizer`` on FSDP2 over 2 gloo processes: a stack of
    ``layers`` float32 ``Linear(width, width)`` (4 x 1024: 4.2M parameters, half on each
    rank). Returns (reimpl ms, torch ms, ratio); see the module docstring."""
    if optimizer not in CONFIGS:
        raise ValueError(f"no FSDP2 step benchmark for {optimizer!r}; one of {list(CONFIGS)}")
    spec = {"optimizer": optimizer, "width": width, "layers": layers}
    return _launch_timed("fsdp_fused_step_times", spec, warmup, reps, timeout)


def bench_sync_batchnorm(
    shape: tuple[int, ...] = (16, 64, 32, 32),
    *,
    warmup: int = 3,
    reps: int = 15,
    timeout: float = 300.0,
) -> StepTimes:
    """Time one training forward + backward of reimpl's SyncBatchNorm over 2 gloo
    processes, each with a float32 batch of ``shape``, against torch's BatchNorm2d on the
    same batch, unsynchronized (see the module docstring)."""
    return _launch_timed("sync_batchnorm_times", {"shape": list(shape)}, warmup, reps, timeout)


def _launch_timed(
    scenario: str, spec: dict[str, Any], warmup: int, reps: int, timeout: float
) -> StepTimes:
    """Run the timing ``scenario`` on 2 gloo processes, ``spec`` passed through the
    environment (the workers inherit it)."""
    from reimpl_parity.distributed import launch

    spec = {**spec, "warmup": warmup, "reps": reps}
    before = os.environ.get(_ENV)
    os.environ[_ENV] = json.dumps(spec)
    try:
        with tempfile.TemporaryDirectory() as out:
            results = launch(scenario, out, world_size=2, timeout=timeout)
    finally:
        if before is None:
            del os.environ[_ENV]
        else:
            os.environ[_ENV] = before
    return StepTimes(*results[0]["times"])


def _model(width: int, layers: int) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    m = torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(layers)))
    for layer in m:
        fully_shard(layer)
    fully_shard(m)
    return m


def fsdp_fused_step_times() -> dict[str, Any]:
    """The worker side (a scenario of :mod:`reimpl_parity.dist_scenarios`): every rank
    times its own step, the slower rank's time counts."""
    import reimpl.optim

    spec = json.loads(os.environ[_ENV])
    kw, torch_path = CONFIGS[spec["optimizer"]]
    steps = []
    for cls, flags in (
        (getattr(reimpl.optim, spec["optimizer"]), {"fused": True}),
        (getattr(torch.optim, spec["optimizer"]), {torch_path: True}),
    ):
        m = _model(spec["width"], spec["layers"])
        opt = cls(m.parameters(), **kw, **flags)
        x = torch.randn(8, spec["width"], generator=torch.Generator().manual_seed(dist.get_rank()))
        m(x).square().mean().backward()
        steps.append(opt.step)

    return {"checks": {}, "times": _interleaved(steps, spec["warmup"], spec["reps"])}


def sync_batchnorm_times() -> dict[str, Any]:
    """The worker side of :func:`bench_sync_batchnorm`."""
    import reimpl.nn

    spec = json.loads(os.environ[_ENV])
    shape = spec["shape"]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(dist.get_rank()))
    x.requires_grad_()
    dy = torch.randn(*shape)
    steps = []
    for m in (reimpl.nn.SyncBatchNorm(shape[1]), torch.nn.BatchNorm2d(shape[1])):

        def step(m: torch.nn.Module = m) -> None:
            m(x).backward(dy)
            x.grad = None

        steps.append(step)
    return {"checks": {}, "times": _interleaved(steps, spec["warmup"], spec["reps"])}


def _interleaved(steps: list[Any], warmup: int, reps: int) -> tuple[float, float, float]:
    """(ours ms, theirs ms, ratio): medians over pairs of calls of ``steps`` (ours,
    theirs), who goes first alternating, each call after a barrier; a pair's time is the
    slower rank's."""

    def timed(step: Any) -> float:
        dist.barrier()
        t0 = time.perf_counter_ns()
        step()
        return (time.perf_counter_ns() - t0) / 1e6

    for _ in range(warmup):
        for step in steps:
            timed(step)
    pairs = torch.zeros(reps, 2, dtype=torch.float64)
    for i in range(reps):
        order = (0, 1) if i % 2 == 0 else (1, 0)  # neither always on the warmer cache
        for j in order:
            pairs[i, j] = timed(steps[j])
    dist.all_reduce(pairs, op=dist.ReduceOp.MAX)
    ours, theirs = pairs[:, 0].tolist(), pairs[:, 1].tolist()
    ratio = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
    return statistics.median(ours), statistics.median(theirs), ratio


def dist_rows(quick: bool, reps: int, only: str | None) -> list[Result]:
    """Work timed on 2 gloo processes (:mod:`reimpl_parity.bench_dist`): SyncBatchNorm's
    training step, and one fused optimizer step on FSDP2 shards per optimizer."""
    if not dist.is_available():
        return []
    shape = (4, 64, 16, 16) if quick else (16, 64, 32, 32)
    width, layers = (512, 2) if quick else (1024, 4)
    cases: list[tuple[str, Callable[[], StepTimes]]] = [
        (
            f"SyncBatchNorm train fwd+bwd 2 ranks {shape} "
            "(torch BatchNorm2d unsynchronized: its SyncBatchNorm has no CPU path)",
            lambda: bench_sync_batchnorm(shape, reps=reps),
        )
    ]
    for name, (_, path) in CONFIGS.items():
        cases.append(
            (
                f"{name} [fused] FSDP2 2 ranks {layers}x{width}x{width} (torch {path})",
                functools.partial(
                    bench_fsdp_fused_step, name, width=width, layers=layers, reps=reps
                ),
            )
        )
    out = []
    for label, run in cases:
        if only and only not in label:
            continue
        t = run()
        out.append(Result(label, "cpu", t.reimpl_ms, t.torch_ms, t.ratio, reps))
        print(row_line(label, t.reimpl_ms, t.torch_ms, t.ratio), flush=True)
    return out
