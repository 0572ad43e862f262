"""Optimizer scenarios run by every rank of a process group: FSDP2 and ZeRO.

Registered in :data:`reimpl_parity.dist_scenarios.SCENARIOS` (run by
:mod:`reimpl_parity.distributed`); kept apart from the SyncBatchNorm and DDP scenarios
because each family of checks is a file of its own size.

* ``fsdp``: reimpl's optimizers on FSDP2 (``fully_shard``, DTensor parameters) on every
  implementation path, and their state_dicts through ``torch.distributed.checkpoint``;
  ``fused=True`` steps of the per-element rules are seen running the C kernels (Triton on
  GPUs) on each rank's local shards, Adafactor's (not per element) seen not to.
* ``zero``: ``ZeroRedundancyOptimizer(optimizer_class=reimpl.optim.X)`` against torch's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

import reimpl.optim
from reimpl._compat import torch_at_least
from reimpl_parity.dist_scenarios import Checks, Result, _device, _full


@dataclass
class OptCase:
    name: str
    optimizer: str
    kwargs: dict[str, Any]
    #: torch's kwargs where they differ (torch has no DTensor rule for some fused kernels)
    ref_kwargs: dict[str, Any] | None = None
    #: FSDP2, ``fused=True``: the kernel family seen running on the local shards at every
    #: step (None: not looked at)
    kernel: str | None = None
    #: FSDP2: shard matrices by column (``Shard(1)``) where they split evenly
    shard_dim1: bool = False


FSDP_CASES = [
    OptCase("adam_single_tensor", "Adam", {"lr": 1e-2, "foreach": False}),
    OptCase("adam_foreach", "Adam", {"lr": 1e-2, "foreach": True}),
    OptCase("adam_fused", "Adam", {"lr": 1e-2, "fused": True}, kernel="adam"),
    OptCase(
        "adamw_foreach_amsgrad",
        "AdamW",
        {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True, "foreach": True},
    ),
    OptCase(
        "adamw_fused", "AdamW", {"lr": 1e-2, "weight_decay": 0.1, "fused": True}, kernel="adam"
    ),
    OptCase(
        "adamw_fused_shard_dim1",
        "AdamW",
        {"lr": 1e-2, "weight_decay": 0.1, "fused": True},
        kernel="adam",
        shard_dim1=True,
    ),
    OptCase(
        "adamw_fused_amsgrad_maximize",
        "AdamW",
        {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True, "maximize": True, "fused": True},
        kernel="adam",
    ),
    OptCase(
        "sgd_foreach_nesterov",
        "SGD",
        {"lr": 0.1, "momentum": 0.9, "nesterov": True, "foreach": True},
    ),
    OptCase("sgd_single_tensor", "SGD", {"lr": 0.1, "momentum": 0.9, "foreach": False}),
    # torch's fused SGD and Adagrad kernels have no DTensor sharding rule (only Adam's and
    # AdamW's do): those cases compare with torch's for-loop path
    OptCase(
        "sgd_fused",
        "SGD",
        {"lr": 0.1, "momentum": 0.9, "fused": True},
        {"lr": 0.1, "momentum": 0.9, "foreach": False},
        kernel="sgd",
    ),
    OptCase(
        "sgd_fused_nesterov_decay",
        "SGD",
        {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01, "fused": True},
        {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01, "foreach": False},
        kernel="sgd",
    ),
    OptCase("rmsprop_foreach", "RMSprop", {"lr": 1e-2, "momentum": 0.5, "foreach": True}),
    # fused RMSprop is reimpl's only (torch has none): compared with torch's for-loop path
    OptCase(
        "rmsprop_fused",
        "RMSprop",
        {"lr": 1e-2, "momentum": 0.5, "centered": True, "fused": True},
        {"lr": 1e-2, "momentum": 0.5, "centered": True, "foreach": False},
        kernel="rmsprop",
    ),
    OptCase("adagrad_foreach", "Adagrad", {"lr": 0.1, "foreach": True}),
    OptCase(
        "adagrad_fused",
        "Adagrad",
        {"lr": 0.1, "lr_decay": 0.01, "fused": True},
        {"lr": 0.1, "lr_decay": 0.01, "foreach": False},
        kernel="adagrad",
    ),
    # fused=True beyond torch (C kernels only reimpl has): against torch's for-loop path.
    # Not Rprop: torch's Rprop raises on DTensors on either path, so there is no oracle here
    *(
        OptCase(f"{name.lower()}_fused", name, kw | {"fused": True}, kw, kernel=name.lower())
        for name, kw in (
            ("NAdam", {"lr": 1e-2, "weight_decay": 0.01, "decoupled_weight_decay": True}),
            ("RAdam", {"lr": 1e-2, "weight_decay": 0.01}),
            ("Adamax", {"lr": 1e-2}),
            ("Adadelta", {"lr": 0.5, "weight_decay": 0.01}),
            ("ASGD", {"lr": 1e-2, "t0": 1.0}),
        )
    ),
    # no flags: both pick their default path for DTensors (torch: the per-tensor loop)
    OptCase("adam_default_flags", "Adam", {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 0.01}),
]


def _fsdp_model(dev: torch.device, shard_dim1: bool = False) -> torch.nn.Module:
    """``shard_dim1``: matrices whose columns split evenly are sharded by column
    (``shard_placement_fn``), the rest by row."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard

    world = dist.get_world_size()

    def by_column(p: Tensor) -> Shard:
        return Shard(1 if p.ndim == 2 and p.shape[1] % world == 0 else 0)

    torch.manual_seed(0)
    # 5 rows on 2 ranks shard unevenly (3 + 2); the last layer's single row leaves rank 1
    # an empty shard of its weight and bias
    m = torch.nn.Sequential(
        torch.nn.Linear(8, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 5),
        torch.nn.Tanh(),
        torch.nn.Linear(5, 1),
    )
    m = m.double().to(dev)
    placement = by_column if shard_dim1 else None
    for layer in m:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, shard_placement_fn=placement)
    fully_shard(m, shard_placement_fn=placement)
    return m


def _train_step(m: torch.nn.Module, opt: torch.optim.Optimizer, step: int, dev: torch.device):
    gen = torch.Generator().manual_seed(10 * step + dist.get_rank())
    x = torch.randn(4, 8, generator=gen, dtype=torch.float64).to(dev)
    opt.zero_grad()
    loss = m(x).square().mean()
    loss.backward()
    opt.step()
    return loss.detach()


@contextmanager
def _kernel_calls() -> Iterator[list[tuple[str, str, list[Tensor]]]]:
    """Records every fused kernel run while open: (kind, family, params), the C kernel's
    (kind ``"c"``) or the Triton binding's (``"triton"``: on GPUs, or on the CPU under the
    interpreter with ``REIMPL_TRITON_CPU=1``)."""
    from reimpl.kernels import cpu_fused
    from reimpl.optim import _fused

    calls: list[tuple[str, str, list[Tensor]]] = []
    run, triton = cpu_fused.Prepared.run, _fused.run_triton

    def spy_run(self: Any, family: str, *args: Any, **kwargs: Any) -> None:
        calls.append(("c", family, list(self.roles[0][1])))
        run(self, family, *args, **kwargs)

    def spy_triton(kernel: str, lists: list[list[Any]], **kwargs: Any) -> bool:
        ran = triton(kernel, lists, **kwargs)
        if ran:
            calls.append(("triton", kernel.rstrip("_"), list(lists[0])))
        return ran

    cpu_fused.Prepared.run, _fused.run_triton = spy_run, spy_triton  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        cpu_fused.Prepared.run, _fused.run_triton = run, triton  # type: ignore[method-assign]


def _check_kernel_calls(
    checks: Checks, name: str, case: OptCase, model: torch.nn.Module, calls: list[Any]
) -> None:
    """A fused step of a per-element rule ran its kernel on the plain local shards (the
    same storage as the DTensors): Triton's where it can take them, else the C kernel."""
    if case.kernel is None:
        return
    with checks.check(f"{name}/kernel_on_local_shards"):
        assert calls, "no kernel ran"
        from torch.distributed.tensor import DTensor

        from reimpl.kernels import triton_available

        mine = [p.to_local() for p in model.parameters() if isinstance(p, DTensor)]
        local = {t.data_ptr(): t.shape for t in mine}
        kind = "triton" if triton_available(mine[0]) else "c"
        for ran, family, params in calls:
            assert (ran, family) == (kind, case.kernel), f"{ran} {family} ran, not {kind}"
            assert all(type(p) is Tensor for p in params), [type(p) for p in params]
            shards = [(p.data_ptr(), p.shape) for p in params if p.numel()]
            assert all(local.get(ptr) == shape for ptr, shape in shards), shards


def _fsdp_case(checks: Checks, case: OptCase, dev: torch.device, steps: int = 3) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    ours_cls = getattr(reimpl.optim, case.optimizer)
    theirs_cls = getattr(torch.optim, case.optimizer)
    m_o, m_t = _fsdp_model(dev, case.shard_dim1), _fsdp_model(dev, case.shard_dim1)
    opt_o = ours_cls(m_o.parameters(), **case.kwargs)
    opt_t = theirs_cls(m_t.parameters(), **(case.ref_kwargs or case.kwargs))
    for step in range(steps):
        lo = torch.full((), float("nan"), dtype=torch.float64, device=dev)
        with checks.check(f"{case.name}/step{step}/runs"), _kernel_calls() as calls:
            lo = _train_step(m_o, opt_o, step, dev)
        _check_kernel_calls(checks, f"{case.name}/step{step}", case, m_o, calls)
        lt = _train_step(m_t, opt_t, step, dev)
        checks.same(f"{case.name}/step{step}/loss", lo, lt)
        checks.same(
            f"{case.name}/step{step}/params",
            _full(list(m_o.parameters())),
            _full(list(m_t.parameters())),
        )
    with checks.check(f"{case.name}/param_is_dtensor"):
        from torch.distributed.tensor import DTensor

        assert all(isinstance(p, DTensor) for p in m_o.parameters())
        dims = {p.placements[0].dim for p in m_o.parameters()}  # type: ignore[attr-defined]
        assert dims == ({0, 1} if case.shard_dim1 else {0}), dims
    sd_o = get_optimizer_state_dict(m_o, opt_o)
    sd_t = get_optimizer_state_dict(m_t, opt_t)
    full_o, full_t = _full(sd_o), _full(sd_t)
    if case.ref_kwargs is not None:  # the flags told apart on purpose may differ
        for sd in (full_o, full_t):
            for g in sd["param_groups"]:
                g.pop("foreach", None)
                g.pop("fused", None)
    checks.same(f"{case.name}/state_dict", full_o, full_t)
    # Full (gathered) form: plain tensors, the same as the sharded one gathered.
    opts = StateDictOptions(full_state_dict=True)
    gathered_o: Any = get_optimizer_state_dict(m_o, opt_o, options=opts)
    with checks.check(f"{case.name}/full_state_dict_plain_tensors"):
        from torch.distributed.tensor import DTensor

        for state in gathered_o["state"].values():
            assert not any(isinstance(v, DTensor) for v in state.values())
    checks.same(f"{case.name}/full_state_dict", gathered_o, _full(sd_o))
    # Round trip into a fresh optimizer of ours, then one more step on both.
    fresh = ours_cls(m_o.parameters(), **case.kwargs)
    set_optimizer_state_dict(m_o, fresh, sd_o)
    with _kernel_calls() as calls:  # (the loaded state is sharded as the params)
        _train_step(m_o, fresh, steps, dev)
    _check_kernel_calls(checks, f"{case.name}/after_reload", case, m_o, calls)
    _train_step(m_t, opt_t, steps, dev)
    checks.same(
        f"{case.name}/params_after_reload",
        _full(list(m_o.parameters())),
        _full(list(m_t.parameters())),
    )


def _fsdp_not_per_element(checks: Checks, dev: torch.device) -> None:
    """Adafactor's second moment (row and column means of the squared gradient) and its
    update clipping (an RMS over the whole tensor) reduce across shards, so its fused step
    must not run on the local shards: it keeps the DTensor fallback, which raises on FSDP2
    as torch's Adafactor does (both reduce in place into a partial placement DTensor
    refuses), and no kernel runs."""
    errors: list[type[Exception] | None] = []
    calls: list[Any] = []
    pairs: list[tuple[Any, dict[str, Any]]] = [
        (reimpl.optim.Adafactor, {"fused": True}),
        (torch.optim.Adafactor, {}),
    ]
    for cls, kw in pairs:
        m = _fsdp_model(dev)
        opt = cls(m.parameters(), lr=1e-2, **kw)
        try:
            with _kernel_calls() as seen:
                _train_step(m, opt, 0, dev)
            errors.append(None)
        except RuntimeError as e:
            errors.append(type(e))
        calls += seen
    with checks.check("adafactor_fused/not_on_local_shards"):
        if torch_at_least(2, 13):
            assert errors[0] is errors[1], errors
        else:  # torch 2.12's DTensor refuses another op of the two first, with another type
            assert (errors[0] is None) == (errors[1] is None), errors
        assert not calls, f"a kernel ran on the shards: {[c[:2] for c in calls]}"


def _fsdp_grad_scaler(checks: Checks, dev: torch.device, steps: int = 3) -> None:
    """GradScaler hands a fused step its scale (``grad_scale``): the kernel unscales the
    local grad shards in the same pass. Against torch's optimizer under the same scaler
    (its fused Adam takes the scale too; its SGD here unscales first)."""
    cases = [
        OptCase("adam", "Adam", {"lr": 1e-2, "fused": True}, kernel="adam"),
        OptCase(
            "sgd",
            "SGD",
            {"lr": 0.1, "momentum": 0.9, "fused": True},
            {"lr": 0.1, "momentum": 0.9, "foreach": False},
            kernel="sgd",
        ),
    ]
    for case in cases:
        name = f"grad_scaler/{case.name}"
        models, scalers, opts = [], [], []
        for cls, kw in (
            (getattr(reimpl.optim, case.optimizer), case.kwargs),
            (getattr(torch.optim, case.optimizer), case.ref_kwargs or case.kwargs),
        ):
            models.append(_fsdp_model(dev))
            opts.append(cls(models[-1].parameters(), **kw))
            scalers.append(torch.amp.GradScaler(dev.type, init_scale=2.0**10))
        for step in range(steps):
            gen = torch.Generator().manual_seed(10 * step + dist.get_rank())
            x = torch.randn(4, 8, generator=gen, dtype=torch.float64).to(dev)
            for i, (m, opt, scaler) in enumerate(zip(models, opts, scalers, strict=True)):
                opt.zero_grad()
                scaler.scale(m(x).square().mean()).backward()
                with _kernel_calls() as calls:
                    scaler.step(opt)
                scaler.update()
                if i == 0:
                    _check_kernel_calls(checks, f"{name}/step{step}", case, m, calls)
            checks.same(
                f"{name}/step{step}/params",
                _full(list(models[0].parameters())),
                _full(list(models[1].parameters())),
            )


def _fsdp_which_go_local(checks: Checks, dev: torch.device) -> None:
    """Which DTensors a fused step takes to the local shards: FSDP2's only (``Shard`` on a
    1-D mesh, grad and state sharded as their param, a per-element rule). Replicated
    placements, a 2-D mesh (HSDP's), a state sharded otherwise than its param or a rule
    that is not per element keep the DTensor fallback."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    from reimpl.optim._fused import local_shards

    world = dist.get_world_size()
    flat, hsdp = init_device_mesh(dev.type, (world,)), init_device_mesh(dev.type, (1, world))
    gen = torch.Generator().manual_seed(7)
    full = [torch.randn(2 * world + 1, 3, generator=gen).to(dev) for _ in range(4)]

    def lists(mesh: Any, placements: list[Any], state: list[Any] | None = None) -> Any:
        p, g, m, v = (distribute_tensor(x, mesh, placements) for x in full)
        if state is not None:
            m = distribute_tensor(full[2], mesh, state)
        step = torch.zeros((), device=dev)
        return reimpl.optim.Adam._Tensors([p], [g], [m], [v], [], [step])

    adam = reimpl.optim.Adam([torch.zeros(1)], fused=True)._forms()
    adafactor = reimpl.optim.Adafactor([torch.zeros(1)], fused=True)._forms()
    sharded = lists(flat, [Shard(0)])
    with checks.check("local_rules/fsdp2_shards_go_local"):
        shards = local_shards(adam, sharded)
        assert shards is not None
        for got, dts in zip(shards, sharded, strict=True):
            for x, y in zip(got, dts, strict=True):
                want = y.to_local() if isinstance(y, DTensor) else y
                assert type(x) is Tensor and x.data_ptr() == want.data_ptr(), (x, y)
    kept = {
        "replicated": (adam, lists(flat, [Replicate()])),
        "hsdp_2d_mesh": (adam, lists(hsdp, [Replicate(), Shard(0)])),
        "state_sharded_otherwise": (adam, lists(flat, [Shard(0)], state=[Shard(1)])),
        "state_replicated": (adam, lists(flat, [Shard(0)], state=[Replicate()])),
        "adafactor_not_per_element": (adafactor, sharded),
    }
    for name, (forms, t) in kept.items():
        with checks.check(f"local_rules/{name}_keeps_the_fallback"):
            assert local_shards(forms, t) is None


def fsdp() -> Result:
    checks = Checks()
    dev = _device()
    for case in FSDP_CASES:
        _fsdp_case(checks, case, dev)
    _fsdp_grad_scaler(checks, dev)
    _fsdp_not_per_element(checks, dev)
    _fsdp_which_go_local(checks, dev)
    return {"checks": checks.results}


ZERO_CASES = [
    OptCase("adam", "Adam", {"lr": 1e-2}),
    OptCase("adamw_foreach", "AdamW", {"lr": 1e-2, "weight_decay": 0.1, "foreach": True}),
    OptCase("sgd_momentum", "SGD", {"lr": 0.1, "momentum": 0.9}),
    # ZeRO's own option (parameters as views into flat buckets) next to the optimizer's
    OptCase(
        "rmsprop_centered_bucket_view",
        "RMSprop",
        {"lr": 1e-2, "momentum": 0.5, "centered": True, "parameters_as_bucket_view": True},
    ),
    OptCase("adagrad_fused", "Adagrad", {"lr": 0.1, "fused": True}),
    OptCase("adamw_fused", "AdamW", {"lr": 1e-2, "weight_decay": 0.1, "fused": True}),
]


def _zero_model(dev: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(3):
        layers += [torch.nn.Linear(8, 8), torch.nn.Tanh()]
    m = torch.nn.Sequential(*layers).double().to(dev)
    return DDP(m, device_ids=[dev.index] if dev.type == "cuda" else None)


def _zero_case(checks: Checks, case: OptCase, dev: torch.device, steps: int = 3) -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer as ZeRO

    ours_cls = getattr(reimpl.optim, case.optimizer)
    theirs_cls = getattr(torch.optim, case.optimizer)
    m_o, m_t = _zero_model(dev), _zero_model(dev)
    z_o = ZeRO(m_o.parameters(), optimizer_class=ours_cls, **case.kwargs)
    z_t = ZeRO(m_t.parameters(), optimizer_class=theirs_cls, **case.kwargs)
    with checks.check(f"{case.name}/local_optimizer_is_ours"):
        assert type(z_o.optim) is ours_cls
    for step in range(steps):
        lo = _train_step(m_o, z_o, step, dev)
        lt = _train_step(m_t, z_t, step, dev)
        checks.same(f"{case.name}/step{step}/loss", lo, lt)
        checks.same(
            f"{case.name}/step{step}/params", list(m_o.parameters()), list(m_t.parameters())
        )
    z_o.consolidate_state_dict(to=0)
    z_t.consolidate_state_dict(to=0)
    sd_o = z_o.state_dict() if dist.get_rank() == 0 else None
    if dist.get_rank() == 0:
        checks.same(f"{case.name}/consolidated_state_dict", sd_o, z_t.state_dict())
    # Every rank loads the consolidated state_dict into a fresh ZeRO over ours.
    box = [sd_o]
    dist.broadcast_object_list(box, src=0)
    fresh = ZeRO(m_o.parameters(), optimizer_class=ours_cls, **case.kwargs)
    assert box[0] is not None
    fresh.load_state_dict(box[0])
    _train_step(m_o, fresh, steps, dev)
    _train_step(m_t, z_t, steps, dev)
    checks.same(f"{case.name}/params_after_reload", list(m_o.parameters()), list(m_t.parameters()))


def zero() -> Result:
    checks = Checks()
    dev = _device()
    for case in ZERO_CASES:
        _zero_case(checks, case, dev)
    return {"checks": checks.results}


def fsdp_and_zero() -> Result:
    """Both optimizer scenarios in one process group (process start-up dominates)."""
    a, b = fsdp(), zero()
    checks = {f"fsdp/{k}": v for k, v in a["checks"].items()}
    checks.update({f"zero/{k}": v for k, v in b["checks"].items()})
    return {"checks": checks}
