"""Triton kernels of the families torch does not fuse (NAdam, RAdam, Adamax, Adadelta,
Rprop, ASGD) against torch's optimizers, the oracle: torch's per-tensor loop
(``foreach=False``), compared after every step, on ``test_triton_optim``'s machinery
(interpreter on CPU, 16-bit steps from identical float32 starting points; see there).

Beyond the rules: one-element per-param states other than the counters (NAdam's
``mu_product``, ASGD's ``eta`` and ``mu``) move once per tensor however many programs
share it, and tensors at different steps in one launch each take their own per-tensor
scalars (RAdam's rectification switches on per tensor).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest
import torch
from test_triton_optim import (
    LOW,
    SIZES,
    Spec,
    _amp_case,
    _close,
    _id,
    _load_state,
    _torch_opt,
    interp,
    run_parity,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton not installed"
)


def _ones(p: torch.Tensor) -> torch.Tensor:
    return torch.ones(1, device=p.device)


def nadam(**kw: Any) -> Spec:
    base = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    base |= {"momentum_decay": 4e-3, "decoupled_weight_decay": False, "maximize": False} | kw
    keys = ("exp_avg", "exp_avg_sq", "mu_product")
    scalars = ("step", "mu_product")
    return Spec("nadam", torch.optim.NAdam, base, keys, init={"mu_product": _ones}, scalars=scalars)


def radam(**kw: Any) -> Spec:
    # beta2 = 0.9: rho_t > 5 from step 6, so 7 steps take both branches
    base = {"lr": 1e-2, "betas": (0.9, 0.9), "eps": 1e-8, "weight_decay": 0.0}
    base |= {"decoupled_weight_decay": False, "maximize": False} | kw
    return Spec("radam", torch.optim.RAdam, base, ("exp_avg", "exp_avg_sq"), n_steps=7)


def adamax(**kw: Any) -> Spec:
    base = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    return Spec(
        "adamax", torch.optim.Adamax, base | {"maximize": False} | kw, ("exp_avg", "exp_inf")
    )


def adadelta(**kw: Any) -> Spec:
    base = {"lr": 1.0, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0, "maximize": False} | kw
    return Spec("adadelta", torch.optim.Adadelta, base, ("square_avg", "acc_delta"))


def rprop(**kw: Any) -> Spec:
    base = {"lr": 1e-2, "etas": (0.5, 1.2), "step_sizes": (1e-6, 50.0), "maximize": False} | kw
    lr = base["lr"]
    init = {"step_size": lambda p: torch.full_like(p, lr)}
    return Spec("rprop", torch.optim.Rprop, base, ("prev", "step_size"), init=init)


def asgd(**kw: Any) -> Spec:
    base = {"lr": 1e-2, "lambd": 1e-4, "alpha": 0.75, "t0": 1e6, "weight_decay": 0.0}
    base |= {"maximize": False} | kw
    lr = base["lr"]
    init = {"eta": lambda p: torch.full((1,), lr, device=p.device), "mu": _ones}
    scalars = ("step", "eta", "mu")
    return Spec("asgd", torch.optim.ASGD, base, ("ax", "mu", "eta"), init=init, scalars=scalars)


#: rows the slower tests take a few of, by name
NAMED = {
    "nadamw-all": nadam(
        weight_decay=0.1, decoupled_weight_decay=True, maximize=True, momentum_decay=0.1
    ),
    "radamw-all": radam(weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
    "adamax-all": adamax(betas=(0.5, 0.9), eps=1e-3, weight_decay=0.1, maximize=True),
    "adadelta-all": adadelta(rho=0.5, eps=1e-3, weight_decay=0.1, maximize=True, lr=0.5),
    # steep factors and a narrow band: the clamps and sign flips within a few steps
    "rprop-clamped": rprop(etas=(0.3, 2.0), step_sizes=(1e-3, 2e-2), maximize=True),
    # t0 = 1: the average starts moving at step 2; big lambd: eta decays visibly
    "asgd-all": asgd(lambd=0.5, alpha=0.5, t0=1.0, weight_decay=0.1, maximize=True),
}
RULE_SPECS = [
    nadam(),
    nadam(weight_decay=0.1),
    NAMED["nadamw-all"],
    radam(),
    radam(weight_decay=0.1, betas=(0.5, 0.999)),
    NAMED["radamw-all"],
    adamax(),
    NAMED["adamax-all"],
    adadelta(),
    NAMED["adadelta-all"],
    rprop(),
    NAMED["rprop-clamped"],
    rprop(step_sizes=(1e-2, 1e-3)),  # min > max: torch.clamp gives max
    asgd(),
    asgd(t0=2.0, weight_decay=0.1),
    NAMED["asgd-all"],
]


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("spec", RULE_SPECS, ids=_id)
def test_parity_full_precision(spec: Spec, dtype: torch.dtype) -> None:
    run_parity(spec, dtype, lr_tensor=False)


@interp
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("spec", RULE_SPECS, ids=_id)
def test_parity_16bit(spec: Spec, dtype: torch.dtype) -> None:
    run_parity(spec, dtype, lr_tensor=False)


@interp
@pytest.mark.parametrize(
    "spec", [s for k, s in NAMED.items() if not k.startswith("rprop")], ids=_id
)  # (Rprop takes no lr: its step sizes start at it)
def test_parity_tensor_lr(spec: Spec) -> None:
    run_parity(spec, torch.float32, lr_tensor=True, n_steps=3)


@interp
@pytest.mark.parametrize("found", [0.0, 1.0])
@pytest.mark.parametrize("spec", list(NAMED.values()), ids=_id)
def test_grad_scale_and_found_inf(spec: Spec, found: float) -> None:
    """found_inf skips the per-tensor kernels too: counters, mu_product, eta, mu stay."""
    _amp_case(spec, found)


#: per tensor: its step count, and its one-element states, before the launch
_AT = {"step": (0.0, 4.0, 40.0), "mu_product": (1.0, 0.4, 0.05), "eta": (1e-2, 5e-3, 1e-3)}
_AT["mu"] = (1.0, 0.5, 0.25)


@interp
@pytest.mark.parametrize(
    "spec", [NAMED["nadamw-all"], radam(), NAMED["adamax-all"], NAMED["asgd-all"]], ids=_id
)
def test_tensors_at_different_steps_in_one_launch(spec: Spec) -> None:
    """Each tensor's scalars come from its own counter (and one-element states): RAdam's
    first tensor steps unrectified while the others are rectified, in one launch."""
    gen = torch.Generator().manual_seed(2)
    params = [torch.randn(n, generator=gen) for n in SIZES]
    st = spec.init_state(params)
    for key, values in _AT.items():
        if key in st:
            st[key] = [torch.full((1,), v) for v in values]
    for key in ("exp_avg", "exp_avg_sq", "exp_inf", "ax"):  # states as after some steps
        if key in st:
            st[key] = [torch.rand(n, generator=gen) for n in SIZES]
    refs = [p.clone() for p in params]
    opt = _torch_opt(spec, refs, spec.kwargs["lr"])
    _load_state(opt, refs, st)
    for k in range(3):
        grads = [torch.randn(n, generator=gen) for n in SIZES]
        for r, g in zip(refs, grads, strict=True):
            r.grad = g.clone()
        opt.step()
        spec.ours(params, grads, st)
        for i, r in enumerate(refs):
            _close(params[i], r, torch.float32, f"step {k} param {i}")
            for key, vals in st.items():
                _close(vals[i], opt.state[r][key], torch.float32, f"step {k} {key} {i}")


@interp
def test_one_element_states_are_checked() -> None:
    """A one-element state (besides the counters) is refused unless it is one element of
    float32/float64 on the params' device, of one dtype per list: the kernels read and
    write exactly one element at each address. The message names the param and key."""
    from reimpl.kernels import triton_optim as K

    params = [torch.randn(n) for n in SIZES]
    grads = [torch.randn(n) for n in SIZES]

    def run(mus: list[torch.Tensor], etas: list[torch.Tensor]) -> None:
        K.asgd_(params, grads, [torch.zeros(n) for n in SIZES], mus, etas,
                [torch.zeros(1) for _ in SIZES], lr=0.1, lambd=1e-4, alpha=0.75, t0=1e6,
                weight_decay=0.0, maximize=False)  # fmt: skip

    ones = [torch.ones(1) for _ in SIZES]
    bad = {
        "2 elements": [torch.ones(1), torch.ones(2), torch.ones(1)],
        "int64": [torch.ones(1), torch.ones(1, dtype=torch.int64), torch.ones(1)],
        "mixed dtypes": [torch.ones(1), torch.ones(1, dtype=torch.float64), torch.ones(1)],
        "meta": [torch.ones(1), torch.ones(1, device="meta"), torch.ones(1)],
    }
    for what, mus in bad.items():
        with pytest.raises(RuntimeError, match="state 'mu' of parameter 1 must be a 1-element"):
            run(mus, ones)
        with pytest.raises(RuntimeError, match="state 'eta' of parameter 1 must be"):
            run(ones, mus)
        assert what  # (each case raised)
    with pytest.raises(RuntimeError, match="2 'mu' tensors for 3 params"):
        run(ones[:2], ones)
    # float64 one-element states (a checkpoint cast them to a float64 param's dtype) run
    run([torch.ones(1, dtype=torch.float64) for _ in SIZES], ones)


@interp
@pytest.mark.parametrize("spec", [NAMED[k] for k in ("adamax-all", "rprop-clamped", "asgd-all")],
                         ids=_id)  # fmt: skip
def test_non_finite_gradients_as_torch(spec: Spec) -> None:
    """NaN and infinite gradient entries flow through as in torch's loop (Adamax's max lets
    a NaN win, Rprop's sign and clamp keep it)."""
    params = [torch.linspace(-1, 1, 8)]
    refs = [params[0].clone()]
    st = spec.init_state(params)
    opt = _torch_opt(spec, refs, spec.kwargs["lr"])
    nan, inf = float("nan"), float("inf")
    for g in (
        [0.5, nan, inf, -inf, 0.0, -0.5, 1.0, 2.0],
        [1.0, 1.0, 1.0, 1.0, 0.0, 0.5, nan, -2.0],
    ):
        refs[0].grad = torch.tensor(g)
        opt.step()
        with np.errstate(all="ignore"):  # (the interpreter computes with numpy)
            spec.ours(params, [torch.tensor(g)], st)
        torch.testing.assert_close(params[0], refs[0], equal_nan=True)
        for key, vals in st.items():
            ref = opt.state[refs[0]][key].reshape(vals[0].shape)
            torch.testing.assert_close(vals[0], ref, equal_nan=True, msg=key)


@interp
@pytest.mark.parametrize("name", ["NAdam", "RAdam", "Adamax", "Adadelta", "Rprop", "ASGD"])
def test_grad_scaler_hand_over_reaches_the_kernel(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end through ``fused=True``: GradScaler's grad_scale/found_inf reach the Triton
    binding; a skipped step leaves params, grads and every state (the one-element ones too)
    as they were, and the others equal torch's steps on the unscaled grads."""
    import reimpl.optim as ours
    from reimpl.kernels import triton_optim

    monkeypatch.setenv("REIMPL_TRITON_CPU", "1")
    binding, seen = getattr(triton_optim, name.lower() + "_"), []

    def spy(*args: Any, **kw: Any) -> None:
        seen.append((kw["grad_scale"], kw["found_inf"]))
        binding(*args, **kw)

    monkeypatch.setattr(triton_optim, binding.__name__, spy)
    gen = torch.Generator().manual_seed(3)
    p = torch.nn.Parameter(torch.randn(1500, generator=gen))
    r = p.detach().clone().requires_grad_()
    opt, ref = getattr(ours, name)([p], fused=True), getattr(torch.optim, name)([r], foreach=False)
    for k, found in enumerate([0.0, 1.0, 0.0, 0.0]):
        g = torch.randn(1500, generator=gen)
        p.grad = g * 1024  # a power of two: unscaling is exact
        opt.grad_scale, opt.found_inf = torch.tensor(1024.0), torch.tensor(found)
        opt.step()
        if not found:
            r.grad = g
            ref.step()
        _close(p.grad, g * (1024 if found else 1), torch.float32, f"step {k} grad")
        _close(p.detach(), r.detach(), torch.float32, f"step {k} param")
        for key, value in ref.state[r].items():
            _close(opt.state[p][key], value, torch.float32, f"step {k} {key}")
    assert len(seen) == 4 and all(s is not None and f is not None for s, f in seen)
