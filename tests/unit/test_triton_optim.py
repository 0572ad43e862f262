"""Triton multi-tensor optimizer kernels against torch's optimizers (the oracle).

On CPU the kernels run under ``TRITON_INTERPRET=1`` (set by conftest) and are compared
with torch's ``foreach=False, fused=False`` path after every step. float32/float64 run a
persistent torch optimizer beside ours for all steps. 16-bit tensors follow torch's fused
convention (math in float32, states stored in 16 bits, rounded once per step), which torch's
CPU per-tensor path does not share (it rounds after every op); so each 16-bit step is
checked from identical starting points: torch steps float32 copies of our current params
and states, and its result rounded to 16 bits must match ours within the dtype tolerance.

The families torch does not fuse at all (NAdam, RAdam, Adamax, Adadelta, Rprop, ASGD)
have their specs in ``test_triton_optim_rules.py``, on this file's machinery; the GPU
tests (compiled kernels against torch) are in ``test_triton_optim_cuda.py``.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor

from reimpl_parity.compare import TOLERANCES

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton not installed"
)
interp = pytest.mark.skipif(
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
    reason="interpreter tests are for CPU-only CI (needs TRITON_INTERPRET=1)",
)

SIZES = (1, 7, 1500)  # one bigger than the kernels' 1024-element block
LOW = (torch.float16, torch.bfloat16)
State = dict[str, list[Any]]
TORCH_FUSED = {torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD, torch.optim.Adagrad}


#: torch's paired keyword arguments, as the bindings (the optimizers' HP fields) name them
_PAIRS = {
    "betas": ("beta1", "beta2"),
    "etas": ("etaminus", "etaplus"),
    "step_sizes": ("step_size_min", "step_size_max"),
}


@dataclass
class Spec:
    """One optimizer: torch's class and kwargs, our launcher, and its state keys."""

    name: str  # the binding's family: triton_optim.<name>_ (adamw: adam_)
    torch_cls: type[torch.optim.Optimizer]
    kwargs: dict[str, Any]
    keys: tuple[str, ...]  # torch's state keys we keep (besides "step"), in binding order
    has_step: bool = True
    init: dict[str, Callable[[Tensor], Tensor]] = field(default_factory=dict)  # not zeros
    scalars: tuple[str, ...] = ("step",)  # one-element states (float32 tolerance)
    n_steps: int = 4

    def ours(self, params: list[Tensor], grads: list[Tensor], st: State, **kw: Any) -> None:
        from reimpl.kernels import triton_optim as K

        k = {**self.kwargs, **kw}
        lr = k.pop("lr")
        if self.name not in ("adam", "adamw", "sgd", "adagrad", "rmsprop"):
            # the states in the binding's order, the steps, then the HP fields it names
            for pair, names in _PAIRS.items():
                if pair in k:
                    k.update(zip(names, k.pop(pair), strict=True))
            if "lr" in K.KEYWORDS[self.name + "_"]:  # (Rprop's lr is the states' start)
                k["lr"] = lr
            states = [st[key] for key in self.keys]
            getattr(K, self.name + "_")(params, grads, *states, st["step"], **k)
        elif self.torch_cls is torch.optim.Adam or self.torch_cls is torch.optim.AdamW:
            b1, b2 = k.pop("betas")
            K.adam_(
                params, grads, st["exp_avg"], st["exp_avg_sq"], st.get("max_exp_avg_sq", []),
                st["step"], lr=lr, beta1=b1, beta2=b2, eps=k.pop("eps"),
                weight_decay=k.pop("weight_decay"), amsgrad=k.pop("amsgrad"),
                maximize=k.pop("maximize"),
                decoupled_weight_decay=self.torch_cls is torch.optim.AdamW, **k,
            )  # fmt: skip
        elif self.torch_cls is torch.optim.SGD:
            K.sgd_(params, grads, st.get("momentum_buffer", []), lr=lr, **k)
        elif self.torch_cls is torch.optim.Adagrad:
            K.adagrad_(params, grads, st["sum"], st["step"], lr=lr, **k)
        else:
            K.rmsprop_(
                params, grads, st["square_avg"], st.get("grad_avg", []),
                st.get("momentum_buffer", []), st["step"], lr=lr, **k,
            )  # fmt: skip

    def init_state(self, params: list[Tensor]) -> State:
        st: State = {}
        for key in self.keys:
            if key == "momentum_buffer" and self.torch_cls is torch.optim.SGD:
                st[key] = [None] * len(params)
            elif key in self.init:
                st[key] = [self.init[key](p) for p in params]
            else:
                st[key] = [torch.zeros_like(p) for p in params]
        if self.has_step:
            st["step"] = [torch.zeros(1, device=p.device) for p in params]
        return st


def adam(**kw: Any) -> Spec:
    base = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    base |= {"amsgrad": False, "maximize": False} | kw
    keys = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if base["amsgrad"] else ())
    return Spec("adam", torch.optim.Adam, base, keys)


def adamw(**kw: Any) -> Spec:
    spec = adam(weight_decay=0.1, **kw)
    return Spec("adamw", torch.optim.AdamW, spec.kwargs, spec.keys)


def sgd(**kw: Any) -> Spec:
    base = {"lr": 0.1, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0}
    base |= {"nesterov": False, "maximize": False} | kw
    keys = ("momentum_buffer",) if base["momentum"] else ()
    return Spec("sgd", torch.optim.SGD, base, keys, has_step=False)


def adagrad(**kw: Any) -> Spec:
    base = {"lr": 0.1, "lr_decay": 0.0, "weight_decay": 0.0, "eps": 1e-10, "maximize": False}
    return Spec("adagrad", torch.optim.Adagrad, base | kw, ("sum",))


def rmsprop(**kw: Any) -> Spec:
    base = {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0}
    base |= {"centered": False, "maximize": False} | kw
    keys = ("square_avg",) + (("grad_avg",) if base["centered"] else ())
    keys += ("momentum_buffer",) if base["momentum"] else ()
    return Spec("rmsprop", torch.optim.RMSprop, base, keys)


#: rows the slower interpreter tests take a few of, by name
NAMED = {
    "adam-amsgrad": adam(amsgrad=True, betas=(0.5, 0.9), eps=1e-3),
    "adamw": adamw(),
    "adamw-amsgrad-max": adamw(amsgrad=True, maximize=True),
    "sgd-damped-max": sgd(momentum=0.9, dampening=0.3, maximize=True),
    "sgd-nesterov": sgd(momentum=0.8, nesterov=True, weight_decay=0.05),
    "adagrad-all": adagrad(lr_decay=0.1, weight_decay=0.1, eps=1e-3, maximize=True),
    "rmsprop-all": rmsprop(centered=True, momentum=0.5, alpha=0.9, eps=1e-3),
}
SPECS = [
    adam(),
    adam(weight_decay=0.1, maximize=True),
    NAMED["adam-amsgrad"],
    NAMED["adamw"],
    NAMED["adamw-amsgrad-max"],
    sgd(),
    sgd(momentum=0.9, weight_decay=0.1),
    NAMED["sgd-damped-max"],
    NAMED["sgd-nesterov"],
    adagrad(),
    NAMED["adagrad-all"],
    rmsprop(),
    rmsprop(centered=True, weight_decay=0.1),
    rmsprop(momentum=0.9, maximize=True),
    NAMED["rmsprop-all"],
]


def _id(spec: Spec) -> str:
    opts = {k: v for k, v in spec.kwargs.items() if v not in (0.0, False)}
    return spec.name + "-" + ",".join(f"{k}={v}" for k, v in opts.items() if k != "lr")


def _torch_opt(spec: Spec, params: list[Tensor], lr: float | Tensor, fused: bool = False) -> Any:
    kw = {**spec.kwargs, "lr": lr}
    if fused:
        kw["fused"] = True
    else:
        kw["foreach"] = False
        if spec.torch_cls in TORCH_FUSED:
            kw["fused"] = False
    return spec.torch_cls(params, **kw)


def _load_state(opt: Any, refs: list[Tensor], st: State) -> None:
    """Give torch's optimizer float32 copies of our current states."""
    for i, r in enumerate(refs):
        s = {k: v[i].float().clone() for k, v in st.items() if k != "step" and v[i] is not None}
        if "step" in st:
            s["step"] = st["step"][i].reshape(()).clone()
        opt.state[r] = s


def _close(ours: Tensor, ref: Tensor, dtype: torch.dtype, what: str) -> None:
    rtol, atol = TOLERANCES[dtype]
    ref = ref.to(ours.device, ours.dtype).reshape(ours.shape)  # (torch's CPU counters)
    torch.testing.assert_close(ours, ref, rtol=rtol,
                               atol=atol, msg=lambda m: f"{what}: {m}")  # fmt: skip


def run_parity(spec: Spec, dtype: torch.dtype, lr_tensor: bool, n_steps: int | None = None) -> None:
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(n, generator=gen).to(dtype) for n in SIZES]
    st = spec.init_state(params)
    lr = spec.kwargs["lr"]
    our_lr: float | Tensor = torch.tensor([lr]) if lr_tensor else lr
    low = dtype in LOW
    refs = [p.clone().to(torch.float32 if low else dtype) for p in params]
    opt = _torch_opt(spec, refs, torch.tensor(lr) if lr_tensor else lr)
    for k in range(n_steps or spec.n_steps):
        grads = [torch.randn(n, generator=gen).to(dtype) for n in SIZES]
        if low:  # re-sync: torch starts this step from our params and states
            refs = [p.float() for p in params]
            opt = _torch_opt(spec, refs, torch.tensor(lr) if lr_tensor else lr)
            if k or spec.init:  # (states that start nonzero start from ours, rounded)
                _load_state(opt, refs, st)
        for r, g in zip(refs, grads, strict=True):
            r.grad = g.to(r.dtype)
        opt.step()
        spec.ours(params, grads, st, lr=our_lr)
        for i, r in enumerate(refs):
            _close(params[i], r.detach(), dtype, f"step {k} param {i}")
            for key, vals in st.items():
                ref_val = opt.state[r][key]
                _close(vals[i], ref_val, vals[i].dtype if key in spec.scalars else dtype,
                       f"step {k} {key} {i}")  # fmt: skip


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("spec", SPECS, ids=_id)
def test_parity_full_precision(spec: Spec, dtype: torch.dtype) -> None:
    run_parity(spec, dtype, lr_tensor=False)


@interp
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("spec", SPECS, ids=_id)
def test_parity_16bit(spec: Spec, dtype: torch.dtype) -> None:
    run_parity(spec, dtype, lr_tensor=False, n_steps=3)


@interp
@pytest.mark.parametrize(
    "spec",
    [NAMED[k] for k in ("adam-amsgrad", "adamw", "sgd-nesterov", "adagrad-all", "rmsprop-all")],
    ids=_id,
)
def test_parity_tensor_lr(spec: Spec) -> None:
    run_parity(spec, torch.float32, lr_tensor=True, n_steps=3)


def _amp_case(spec: Spec, found: float, device: str = "cpu") -> None:
    """grad_scale divides the grads (written back unscaled); found_inf != 0 skips all."""
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(n, generator=gen).to(device) for n in SIZES]
    twin = [p.clone() for p in params]
    st, st_twin = spec.init_state(params), spec.init_state(twin)
    for _ in range(2):  # a plain step first, so states are nonzero
        grads = [torch.randn(n, generator=gen).to(device) for n in SIZES]
        spec.ours(params, grads, st)
        spec.ours(twin, [g.clone() for g in grads], st_twin)
    grads = [torch.randn(n, generator=gen).to(device) for n in SIZES]
    scale = torch.tensor([1024.0], device=device)
    scaled = [g * scale for g in grads]
    before = ([p.clone() for p in params], {k: [x.clone() for x in v] for k, v in st.items()})
    found_inf = torch.tensor([found], device=device)
    spec.ours(params, scaled, st, grad_scale=scale, found_inf=found_inf)
    if found:
        torch.testing.assert_close(params, before[0], rtol=0, atol=0)
        torch.testing.assert_close(st, before[1], rtol=0, atol=0)
        torch.testing.assert_close(scaled, [g * scale for g in grads], rtol=0, atol=0)
        return
    spec.ours(twin, grads, st_twin)
    torch.testing.assert_close(params, twin, rtol=0, atol=0)
    torch.testing.assert_close(st, st_twin, rtol=0, atol=0)
    torch.testing.assert_close(scaled, grads, rtol=0, atol=0)


@interp
@pytest.mark.parametrize("found", [0.0, 1.0])
@pytest.mark.parametrize(
    "spec",
    [NAMED[k] for k in ("adamw-amsgrad-max", "sgd-damped-max", "adagrad-all", "rmsprop-all")],
    ids=_id,
)
def test_grad_scale_and_found_inf(spec: Spec, found: float) -> None:
    _amp_case(spec, found)


@interp
def test_tables_are_cached_and_inputs_checked() -> None:
    from reimpl.kernels import triton_launch as L
    from reimpl.kernels import triton_optim as K

    params = [torch.randn(n) for n in SIZES]
    grads = [torch.randn(n) for n in SIZES]
    L._BLOCK_MAPS.clear()
    L._ADDRESSES.clear()
    for _ in range(2):
        K.sgd_(params, grads, [], lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0,
               nesterov=False, maximize=False)  # fmt: skip
    assert (len(L._BLOCK_MAPS), len(L._ADDRESSES)) == (1, 2)
    blk_tensor, blk_start, numels = next(iter(L._BLOCK_MAPS.values()))
    assert blk_tensor.tolist() == [0, 1, 2, 2]
    assert blk_start.tolist() == [0, 0, 0, 1024]
    assert numels.tolist() == list(SIZES)
    bad = [g.double() for g in grads]
    for _ in range(2):  # a failed check is not cached
        with pytest.raises(RuntimeError, match=r"the gradient of parameter 0 is torch\.float64"):
            K.sgd_(params, bad, [], lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0,
                   nesterov=False, maximize=False)  # fmt: skip
    with pytest.raises(ValueError, match="all None"):
        K.sgd_(params, grads, [None, torch.zeros(7), None], lr=0.1, momentum=0.9,
               dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False)  # fmt: skip
    K.adam_([], [], [], [], [], [], lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0,
            amsgrad=False, maximize=False, decoupled_weight_decay=False)  # fmt: skip


_COMPILE = """
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from reimpl.kernels import triton_common as C
from reimpl.kernels import triton_optim as K
from reimpl.kernels import triton_optim_adam_family as F
from reimpl.kernels import triton_optim_rules as R

def compile_one(fn, consts):
    sig = {}
    for p in fn.params:
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        elif p.annotation_type:
            sig[p.name] = p.annotation_type
        elif p.name == "n_tensors":
            sig[p.name] = "i32"
        else:
            ptr = "*fp32" if "_ptr" in p.name else "*i64"
            sig[p.name] = "*i32" if p.name == "blk_tensor" else ptr
    assert all(sig[k] == "fp64" for k in ("lr", "eps", "weight_decay") if k in sig), sig
    consts = {k: v for k, v in consts.items() if k in sig}  # (base has every family's flags)
    return triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32))

amp = dict(LR_PTR=True, HAS_SCALE=True, HAS_INF=True, MAXIMIZE=True, HAS_WD=True, BLOCK=1024)
for elt, acc, align in [(tl.bfloat16, tl.float32, 16), (tl.float64, tl.float64, 1)]:
    base = dict(amp, ELT=elt, ACC=acc, ALIGN=align)
    nadam = dict(base, S_ELT=tl.float32, M_ELT=tl.float64)
    ks = [
        compile_one(K._adam_kernel, dict(base, S_ELT=tl.float32, AMSGRAD=True, DECOUPLED=True)),
        compile_one(K._sgd_kernel, dict(base, MOMENTUM=True, FIRST=False, NESTEROV=True)),
        compile_one(K._adagrad_kernel, dict(base, S_ELT=tl.float32)),
        compile_one(K._rmsprop_kernel, dict(base, CENTERED=True, MOMENTUM=True)),
        compile_one(F._adam_family_kernel, dict(nadam, RADAM=False, DECOUPLED=True)),
        compile_one(F._adam_family_kernel, dict(nadam, RADAM=True, DECOUPLED=False)),
        compile_one(F._adamax_kernel, dict(base, S_ELT=tl.float32)),
        compile_one(R._adadelta_kernel, base),
        compile_one(R._rprop_kernel, base),
        compile_one(R._asgd_kernel, dict(base, E_ELT=tl.float32, U_ELT=tl.float64)),
    ]
    if align == 16:  # every element kernel's full blocks use vector loads
        assert all("ld.global.v4" in k.asm["ptx"] or "ld.global.nc.v4" in k.asm["ptx"]
                   for k in ks)
lanes = dict(S_ELT=tl.float32, HAS_INF=True, BLOCK=128)
compile_one(C._steps_kernel, lanes)
compile_one(F._nadam_schedule_kernel, dict(lanes, M_ELT=tl.float64))
compile_one(R._asgd_schedule_kernel, dict(lanes, E_ELT=tl.float32, U_ELT=tl.float64, LR_PTR=True))
print("ok")
"""


@interp
def test_kernels_compile_for_sm90() -> None:
    """The compiled (GPU) path, short of running: every kernel lowers to sm_90 code here,
    float arguments are float64, and full blocks use vector loads."""
    import subprocess
    import sys
    from pathlib import Path

    from reimpl.kernels import triton_optim

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(triton_optim.__file__).parents[2])
    res = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _COMPILE], env=env, capture_output=True, text=True
    )
    if res.returncode != 0 and "ptxas" in res.stderr and "not found" in res.stderr:
        pytest.skip("no ptxas for sm_90")
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


@interp
def test_empty_and_unaligned_tensors() -> None:
    """A 0-element param takes no block; a view at a 4-byte offset turns vector loads off."""
    from reimpl.kernels import triton_optim as K

    base = torch.randn(1 + 1500)
    spec = adam(weight_decay=0.1)
    params = [torch.randn(0), base[1:], torch.randn(3)]  # base[1:] is 4 bytes past 16
    refs = [p.clone().requires_grad_() for p in params]
    opt = _torch_opt(spec, refs, spec.kwargs["lr"])
    st = spec.init_state(params)
    plan = K._plan([params, [p.clone() for p in params]], ["param", "grad"], None)
    assert plan.align == 1 and plan.blk_tensor.tolist() == [1, 1, 2]
    for _ in range(2):
        grads = [torch.randn(p.shape) for p in params]
        for r, g in zip(refs, grads, strict=True):
            r.grad = g
        opt.step()
        spec.ours(params, grads, st)
    for p, r in zip(params, refs, strict=True):
        _close(p, r.detach(), torch.float32, "param")


FUSED_ROWS = ["SGD", "Adagrad", "Adam", "AdamW", "RMSprop", "NAdam", "RAdam", "Adamax"]
FUSED_ROWS += ["Adadelta", "Rprop", "ASGD"]


@pytest.mark.parametrize("row", [f"{r}-fused" for r in FUSED_ROWS])
def test_fused_optimizers_take_the_triton_path(row: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: with the kernels allowed on CPU (interpreter), ``fused=True`` runs the Triton
    kernels through the optimizers' hooks and still matches torch's trajectories."""
    import reimpl.kernels.triton_optim as triton_optim
    from reimpl_parity.cases.optim import OPTIM_CASES
    from reimpl_parity.harness import check_case

    monkeypatch.setenv("REIMPL_TRITON_CPU", "1")
    calls: list[str] = []
    for name in triton_optim.KEYWORDS:
        real = getattr(triton_optim, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(triton_optim, name, spy)
    import dataclasses

    import numpy as np

    case = next(c for c in OPTIM_CASES if c.name == f"optim.{row}")

    def quiet(*args: Any, **kwargs: Any) -> Any:
        # the interpreter runs on numpy, which warns about 0/0 (lr = eps = 0); a GPU does not
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return case.ours(*args, **kwargs)

    check_case(dataclasses.replace(case, ours=quiet), torch.float32, "cpu", max_examples=3)
    family = row.removesuffix("-fused").lower().removesuffix("w") + "_"
    assert family in calls, f"the fused hook did not reach the Triton kernel {family}: {calls}"
