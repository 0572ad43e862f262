"""Scenarios run by every rank of a process group (see :mod:`reimpl_parity.distributed`).

Each returns ``{"checks": {name: failure message or ""}, ...}``. Collectives are issued
in the same order on every rank whatever the comparisons find.

* ``syncbn``: :class:`reimpl.nn.SyncBatchNorm` against torch's single-process BatchNorm
  over the concatenated global batch (torch's own SyncBatchNorm refuses CPU tensors, and
  the two are the same computation), on accelerators also against torch's SyncBatchNorm.
* ``ddp``: DistributedDataParallel training with reimpl's losses, regularizers, schedulers
  (and optimizers when present) against the same run with torch's, step for step.
* ``fsdp``, ``zero``: reimpl's optimizers on FSDP2 and under ZeroRedundancyOptimizer, in
  :mod:`reimpl_parity.dist_optim`; ``fsdp_fused_step_times``: the timing of
  :mod:`reimpl_parity.bench_dist`.
"""

from __future__ import annotations

import importlib
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

import reimpl
import reimpl.nn
import reimpl.optim
from reimpl._compat import NORM_BIAS
from reimpl.optim import lr_scheduler as our_sched
from reimpl_parity.compare import TOLERANCES, compare

Result = dict[str, Any]


class Checks:
    """Named pass/fail records; a failing comparison is recorded, not raised."""

    def __init__(self) -> None:
        self.results: dict[str, str] = {}

    @contextmanager
    def check(self, name: str) -> Iterator[None]:
        self.results.setdefault(name, "")
        try:
            yield
        except Exception as e:
            msg = f"{type(e).__name__}: {e}"
            if not isinstance(e, AssertionError):
                msg += "\n" + traceback.format_exc()[-1500:]
            self.results[name] = (self.results[name] + "\n" + msg).strip()

    def same(self, name: str, ours: Any, theirs: Any, dtype: torch.dtype = torch.float64) -> None:
        rtol, atol = TOLERANCES[dtype]
        with self.check(name):
            compare(ours, theirs, rtol=rtol, atol=atol, what=name)


def _device() -> torch.device:
    if dist.get_backend() == "nccl":
        torch.cuda.set_device(dist.get_rank())
        return torch.device("cuda", dist.get_rank())
    return torch.device("cpu")


def _full(x: Any) -> Any:
    """DTensors gathered to full tensors (a collective), recursively; the rest as is."""
    from torch.distributed.tensor import DTensor

    if isinstance(x, DTensor):
        return x.full_tensor()
    if isinstance(x, dict):
        return {k: _full(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_full(v) for v in x)
    return x


# --------------------------------------------------------------------------- SyncBatchNorm


@dataclass
class BNCase:
    name: str
    spatial: tuple[int, ...]
    sizes: tuple[int, ...]  # local batch size of rank r is sizes[r % len(sizes)]
    dtype: torch.dtype = torch.float64
    kwargs: dict[str, Any] = field(default_factory=dict)
    channels_last: bool = False
    group: str = "world"  # "world", "explicit" (a new_group of all ranks), "self" (size 1)
    param_dtype: torch.dtype | None = None  # weight, bias and running stats, if not dtype
    # weight/bias gradients: sums over N·S elements per channel, which each rank sums
    # locally before the all_reduce where the reference sums once; past a few thousand
    # float32 terms that order alone moves them by more than the float32 atol
    sum_atol: float | None = None


BN_CASES = [
    BNCase("2d_input_unequal_batches", (), (3, 5)),
    BNCase("3d_input_cumulative_momentum", (4,), (2, 3), kwargs={"momentum": None}),
    BNCase("4d_input_channels_last_f32", (3, 2), (2, 2), torch.float32, channels_last=True),
    # past the C kernels' one-thread grain (32768 elements a call)
    BNCase("4d_input_many_elements_f32", (48, 64), (4, 3), torch.float32, sum_atol=2e-3),
    BNCase("5d_input_no_affine", (2, 2, 2), (1, 2), kwargs={"affine": False}),
    BNCase("empty_rank", (3,), (4, 0)),
    BNCase("untracked_stats", (3,), (3, 2), kwargs={"track_running_stats": False}),
    BNCase("explicit_process_group", (2,), (2, 3), group="explicit"),
    BNCase("world_size_1_group_falls_back", (2,), (3, 2), group="self"),
    # AMP-style: 16-bit activations, float32 parameters and statistics
    BNCase(
        "bfloat16_input_float32_params", (5,), (3, 4), torch.bfloat16, param_dtype=torch.float32
    ),
    BNCase(
        "float16_input_float32_params", (2, 2), (2, 1), torch.float16, param_dtype=torch.float32
    ),
]
if NORM_BIAS:  # (torch's batch norms take bias= from 2.12 on)
    BN_CASES.append(BNCase("no_bias", (), (4, 3), kwargs={"bias": False}))


def _torch_bn(dims: int) -> type[torch.nn.Module]:
    return {0: torch.nn.BatchNorm1d, 1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d}.get(
        dims, torch.nn.BatchNorm3d
    )


@contextmanager
def _bn_kernel_calls() -> Iterator[list[str]]:
    """Records each batch norm C kernel call while open ("forward" or "backward")."""
    from reimpl.kernels import cpu_batch_norm as k

    calls: list[str] = []
    fwd, bwd = k.forward, k.backward

    def spy(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*a: Any, **kw: Any) -> Any:
            calls.append(name)
            return fn(*a, **kw)

        return run

    k.forward, k.backward = spy("forward", fwd), spy("backward", bwd)  # type: ignore[assignment]
    try:
        yield calls
    finally:
        k.forward, k.backward = fwd, bwd  # type: ignore[assignment]


def _bn_case(checks: Checks, case: BNCase, groups: dict[str, Any], dev: torch.device) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = [case.sizes[r % len(case.sizes)] for r in range(world)]
    n_local, offset = sizes[rank], sum(sizes[:rank])
    channels = 3
    gen = torch.Generator().manual_seed(1234)
    kw = case.kwargs
    pdtype = case.param_dtype or case.dtype
    ref = _torch_bn(len(case.spatial))(channels, **kw).to(dev, pdtype)
    group = groups["self"] if case.group == "self" else groups.get(case.group)
    ours = reimpl.nn.SyncBatchNorm(channels, process_group=group, **kw).to(dev, pdtype)
    theirs_sync = None
    if dev.type != "cpu" and case.group != "self":
        theirs_sync = torch.nn.SyncBatchNorm(channels, process_group=group, **kw)
        theirs_sync = theirs_sync.to(dev, pdtype)
    if kw.get("affine", True):
        with torch.no_grad():
            w = torch.rand(channels, generator=gen, dtype=pdtype) + 0.5
            b = torch.randn(channels, generator=gen, dtype=pdtype)
            mods: list[Any] = [ref, ours, theirs_sync]
            for m in mods:
                if m is None:
                    continue
                m.weight.copy_(w)
                if m.bias is not None:
                    m.bias.copy_(b)
    name = case.name
    tol = case.dtype

    def fmt(t: Tensor) -> Tensor:
        if case.channels_last:
            return t.contiguous(memory_format=torch.channels_last)
        return t

    for step in range(2):
        shape = (sum(sizes), channels, *case.spatial)
        xg = torch.randn(shape, generator=gen, dtype=case.dtype).to(dev)
        gg = torch.randn(shape, generator=gen, dtype=case.dtype).to(dev)
        xl, gl = xg[offset : offset + n_local], gg[offset : offset + n_local]
        # Reference: torch's batch norm over the global batch (or the local one, size-1 group).
        xr = (xl if case.group == "self" else xg).clone()
        gr = gl if case.group == "self" else gg
        xr = fmt(xr).requires_grad_()
        yr = ref(xr)
        (yr * gr).sum().backward()
        xo = fmt(xl.clone()).requires_grad_()
        with _bn_kernel_calls() as calls:
            yo = ours(xo)
            (yo * gl).sum().backward()
        if dev.type == "cpu" and case.group != "self":
            # float32/float64 with a local batch: statistics and output, local sums and
            # the input gradient (two calls each); otherwise none
            kernels = n_local > 0 and case.dtype in (torch.float32, torch.float64)
            want = ["forward"] * 2 + ["backward"] * 2 if kernels else []
            with checks.check(f"{name}/step{step}/kernel_calls"):
                assert calls == want, f"{calls}, expected {want}"
        ref_y = yr if case.group == "self" else yr[offset : offset + n_local]
        assert xr.grad is not None
        ref_gx = xr.grad if case.group == "self" else xr.grad[offset : offset + n_local]
        checks.same(f"{name}/step{step}/output", yo, ref_y, tol)
        checks.same(f"{name}/step{step}/input_grad", xo.grad, ref_gx, tol)
        if case.channels_last:
            with checks.check(f"{name}/step{step}/channels_last_output"):
                assert yo.is_contiguous(memory_format=torch.channels_last)
        # weight/bias gradients are local (DDP averages them): their sum is the global one
        for pname in ("weight", "bias"):
            p_ours, p_ref = getattr(ours, pname), getattr(ref, pname)
            if p_ours is None:
                continue
            g = p_ours.grad.detach().clone()
            if case.group != "self":
                dist.all_reduce(g, group=group)
            what = f"{name}/step{step}/{pname}_grad"
            if case.sum_atol is None:
                checks.same(what, g, p_ref.grad, pdtype)
                continue
            with checks.check(what):
                compare(g, p_ref.grad, rtol=TOLERANCES[pdtype][0], atol=case.sum_atol, what=what)
        if theirs_sync is not None:
            xt = fmt(xl.clone()).requires_grad_()
            yt = theirs_sync(xt)
            (yt * gl).sum().backward()
            checks.same(f"{name}/step{step}/output_vs_torch_sync", yo, yt, tol)
            checks.same(f"{name}/step{step}/input_grad_vs_torch_sync", xo.grad, xt.grad, tol)
            theirs_sync.zero_grad()
        for bname in ("running_mean", "running_var", "num_batches_tracked"):
            ours_b, ref_b = getattr(ours, bname), getattr(ref, bname)
            checks.same(f"{name}/step{step}/{bname}", ours_b, ref_b, pdtype)
        ours.zero_grad()
        ref.zero_grad()
    # Evaluation: running statistics (or local batch statistics when untracked), no sync.
    ours.eval()
    ref.eval()
    if n_local > 0:
        x = torch.randn((n_local, channels, *case.spatial), generator=gen, dtype=case.dtype)
        x = fmt(x.to(dev))
        with torch.no_grad():
            checks.same(f"{name}/eval_output", ours(x), ref(x), tol)


def syncbn() -> Result:
    checks = Checks()
    dev = _device()
    rank, world = dist.get_rank(), dist.get_world_size()
    groups: dict[str, Any] = {"world": None, "explicit": dist.new_group(list(range(world)))}
    for r in range(world):  # every rank creates every group
        g = dist.new_group([r])
        if r == rank:
            groups["self"] = g
    for case in BN_CASES:
        _bn_case(checks, case, groups, dev)
    return {"checks": checks.results}


# --------------------------------------------------------------------------- DDP


def _opt_classes(name: str) -> tuple[type[torch.optim.Optimizer], type[torch.optim.Optimizer]]:
    """(ours, torch's); torch's stands in for ours while reimpl.optim lacks it."""
    theirs = getattr(torch.optim, name)
    return getattr(reimpl.optim, name, theirs), theirs


def _mlp(bn: type[torch.nn.Module], drop: type[torch.nn.Module] | None, p: float) -> Any:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = [torch.nn.Linear(6, 8), bn(8), torch.nn.ReLU()]
    if drop is not None:
        layers.append(drop(p))
    layers.append(torch.nn.Linear(8, 3))
    return torch.nn.Sequential(*layers).double()


@dataclass
class DDPCase:
    name: str
    optimizer: str
    opt_kwargs: dict[str, Any]
    scheduler: str
    sched_kwargs: dict[str, Any]
    loss: str
    loss_kwargs: dict[str, Any]
    dropout: str | None = "Dropout"
    p: float = 0.25


DDP_CASES = [
    DDPCase(
        "sgd_onecycle_crossentropy_dropout",
        "SGD",
        {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
        "OneCycleLR",
        {"max_lr": 0.3, "total_steps": 6},
        "CrossEntropyLoss",
        {"label_smoothing": 0.1},
    ),
    DDPCase(
        "adamw_cosine_huber_alphadropout",
        "AdamW",
        {"lr": 0.01, "weight_decay": 0.05, "amsgrad": True},
        "CosineAnnealingLR",
        {"T_max": 4, "eta_min": 1e-4},
        "HuberLoss",
        {"delta": 0.5},
        dropout="AlphaDropout",
        p=0.2,
    ),
]


def _batch(step: int, rank: int, loss: str, dev: torch.device) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(100 * step + rank)
    x = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    if loss == "CrossEntropyLoss":
        y = torch.randint(0, 3, (5,), generator=gen)
    else:
        y = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    return x.to(dev), y.to(dev)


def _ddp_case(checks: Checks, case: DDPCase, dev: torch.device, steps: int = 6) -> bool:
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank = dist.get_rank()
    ids = [dev.index] if dev.type == "cuda" else None
    drop_o = getattr(reimpl.nn, case.dropout) if case.dropout else None
    drop_t = getattr(torch.nn, case.dropout) if case.dropout else None
    m_o = DDP(_mlp(reimpl.nn.BatchNorm1d, drop_o, case.p).to(dev), device_ids=ids)
    m_t = DDP(_mlp(torch.nn.BatchNorm1d, drop_t, case.p).to(dev), device_ids=ids)
    opt_o_cls, opt_t_cls = _opt_classes(case.optimizer)
    opt_o = opt_o_cls(m_o.parameters(), **case.opt_kwargs)
    opt_t = opt_t_cls(m_t.parameters(), **case.opt_kwargs)
    sch_o = getattr(our_sched, case.scheduler)(opt_o, **case.sched_kwargs)
    sch_t = getattr(torch.optim.lr_scheduler, case.scheduler)(opt_t, **case.sched_kwargs)
    loss_o = getattr(reimpl.nn, case.loss)(**case.loss_kwargs)
    loss_t = getattr(torch.nn, case.loss)(**case.loss_kwargs)
    for step in range(steps):
        x, y = _batch(step, rank, case.loss, dev)
        losses = []
        for m, opt, sch, fn in ((m_o, opt_o, sch_o, loss_o), (m_t, opt_t, sch_t, loss_t)):
            torch.manual_seed(1000 + 10 * step + rank)  # per-rank dropout masks, same for both
            opt.zero_grad()
            loss = fn(m(x), y)
            loss.backward()
            opt.step()
            sch.step()
            losses.append(loss.detach())
        n = f"{case.name}/step{step}"
        checks.same(f"{n}/loss", losses[0], losses[1])
        checks.same(f"{n}/lr", sch_o.get_last_lr(), sch_t.get_last_lr())
        checks.same(f"{n}/params", list(m_o.parameters()), list(m_t.parameters()))
        checks.same(f"{n}/buffers", list(m_o.buffers()), list(m_t.buffers()))
    return opt_o_cls is not opt_t_cls


def _ddp_syncbn(checks: Checks, dev: torch.device, steps: int = 4) -> None:
    """Ours: DDP over SyncBatchNorm (converted from our BatchNorm1d), every rank its own
    batch. Torch: one process, plain BatchNorm1d over all ranks' batches together."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world = dist.get_rank(), dist.get_world_size()
    ids = [dev.index] if dev.type == "cuda" else None
    if dev.type == "cpu":
        # DDP refuses any torch.nn.SyncBatchNorm in a CPU model, and ours is one (class
        # identity): held to torch's refusal there; the comparison runs on CUDA
        errors: list[type[Exception] | None] = []
        for ns in (reimpl.nn, torch.nn):
            try:
                DDP(ns.SyncBatchNorm.convert_sync_batchnorm(_mlp(ns.BatchNorm1d, None, 0.0)))
                errors.append(None)
            except ValueError as e:
                errors.append(type(e))
        with checks.check("ddp_syncbn/cpu_refused_like_torch"):
            assert errors == [ValueError, ValueError], errors
        return
    local = _mlp(reimpl.nn.BatchNorm1d, None, 0.0)
    m_o = DDP(reimpl.nn.SyncBatchNorm.convert_sync_batchnorm(local).to(dev), device_ids=ids)
    m_t = _mlp(torch.nn.BatchNorm1d, None, 0.0).to(dev)
    opt_o_cls, opt_t_cls = _opt_classes("SGD")
    kw: dict[str, Any] = {"lr": 0.2, "momentum": 0.5}
    opt_o, opt_t = opt_o_cls(m_o.parameters(), **kw), opt_t_cls(m_t.parameters(), **kw)
    with checks.check("ddp_syncbn/converted"):
        assert isinstance(m_o.module[1], reimpl.nn.SyncBatchNorm)
    for step in range(steps):
        batches = [_batch(step, r, "CrossEntropyLoss", dev) for r in range(world)]
        x, y = batches[rank]
        opt_o.zero_grad()
        loss = reimpl.nn.CrossEntropyLoss()(m_o(x), y)
        loss.backward()
        opt_o.step()
        g_loss = loss.detach().clone()
        dist.all_reduce(g_loss)
        opt_t.zero_grad()
        xs, ys = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        ref = torch.nn.CrossEntropyLoss()(m_t(xs), ys)
        ref.backward()
        opt_t.step()
        n = f"ddp_syncbn/step{step}"
        checks.same(f"{n}/global_loss", g_loss / world, ref.detach())
        checks.same(f"{n}/params", list(m_o.parameters()), list(m_t.parameters()))
        checks.same(f"{n}/buffers", list(m_o.buffers()), list(m_t.buffers()))


def ddp() -> Result:
    checks = Checks()
    dev = _device()
    ours_optim = [_ddp_case(checks, case, dev) for case in DDP_CASES]
    _ddp_syncbn(checks, dev)
    return {"checks": checks.results, "our_optimizers": all(ours_optim)}


def _elsewhere(module: str, scenario: str) -> Result:
    """A scenario of another module (imported on use: it imports this module's checks)."""
    result: Result = getattr(importlib.import_module(f"reimpl_parity.{module}"), scenario)()
    return result


def hang() -> Result:
    """Rank 1 never reaches the barrier (for the launcher's timeout test)."""
    if dist.get_rank() == 1:
        time.sleep(3600)
    dist.barrier()
    return {"checks": {}}


def fail() -> Result:
    """Rank 1 raises while rank 0 waits in a collective (for the launcher's test)."""
    if dist.get_rank() == 1:
        raise RuntimeError("rank 1 fails on purpose")
    dist.barrier()
    return {"checks": {}}


SCENARIOS: dict[str, Callable[[], Result]] = {
    "hang": hang,
    "fail": fail,
    "syncbn": syncbn,
    "ddp": ddp,
    "syncbn_and_ddp": lambda: {
        "checks": {**syncbn()["checks"], **(d := ddp())["checks"]},
        "our_optimizers": d["our_optimizers"],
    },
    "fsdp": lambda: _elsewhere("dist_optim", "fsdp"),
    "zero": lambda: _elsewhere("dist_optim", "zero"),
    "fsdp_and_zero": lambda: _elsewhere("dist_optim", "fsdp_and_zero"),
    "fsdp_fused_step_times": lambda: _elsewhere("bench_dist", "fsdp_fused_step_times"),
    "sync_batchnorm_times": lambda: _elsewhere("bench_dist", "sync_batchnorm_times"),
}
