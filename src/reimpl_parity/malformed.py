"""Malformed optimizer state, as a corrupted or mismatched checkpoint brings it, on every
path of every optimizer that has a native kernel -- run in a child process.

A native kernel handed a state tensor that does not fit its parameter writes past a heap
block and kills the process; so each (optimizer, path) runs here, in its own interpreter
(``python -m reimpl_parity.malformed OPTIMIZER PATH``), printing one JSON line as each
case starts and one with its outcome. The test reads the lines: a child that dies shows
the case it died in.

For each case the outcome is recorded for reimpl's path and for torch on the same path
(the for-loop and foreach paths; torch's fused kernels only where they are memory safe,
since torch 2.13's crash on a wrong size too), so the test can hold reimpl to torch's
exception type. Where both compute, the largest difference between the two updated
parameters is recorded.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import reimpl.optim

N = 64  # elements per parameter: the kernels' loops, not the sizes, are under test


@dataclass(frozen=True)
class Optim:
    name: str
    kwargs: dict[str, Any]
    keys: tuple[str, ...]  # the state tensors (besides step) this configuration keeps
    has_step: bool = True
    torch_fused: bool = True  # torch has a fused kernel for it
    #: cases torch computes with by mistake, which reimpl refuses on every path (RuntimeError)
    refuses: tuple[str, ...] = ()
    why_refuses: str = ""


OPTIMS = {
    o.name: o
    for o in (
        Optim("Adam", {"amsgrad": True}, ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")),
        Optim("AdamW", {}, ("exp_avg", "exp_avg_sq")),
        Optim("SGD", {"momentum": 0.9}, ("momentum_buffer",), has_step=False),
        Optim("Adagrad", {}, ("sum",)),
        Optim("Adamax", {}, ("exp_avg", "exp_inf"), torch_fused=False),
        Optim("Adafactor", {"weight_decay": 0.1}, ("variance",), torch_fused=False),
        Optim(
            "Rprop",
            {"etas": (0.3, 1.5), "step_sizes": (1e-4, 1.0)},
            ("prev", "step_size"),
            torch_fused=False,
        ),
        Optim(
            "ASGD",
            {"t0": -5.0, "weight_decay": 0.1, "lambd": 0.1},
            ("ax",),
            torch_fused=False,
            refuses=("step int", "step float"),
            why_refuses="torch's ASGD loop steps a plain-number counter without advancing it "
            "(the += rebinds a local); reimpl refuses such a checkpoint, as torch's other "
            "optimizers do",
        ),
        Optim("Adadelta", {"weight_decay": 0.1}, ("square_avg", "acc_delta"), torch_fused=False),
        Optim(
            "NAdam",
            {"weight_decay": 0.1, "decoupled_weight_decay": True},
            ("exp_avg", "exp_avg_sq"),
            torch_fused=False,
        ),
        Optim(
            "RAdam",
            {"decoupled_weight_decay": True, "weight_decay": 0.1},
            ("exp_avg", "exp_avg_sq"),
            torch_fused=False,
        ),
        Optim(
            "RMSprop",
            {"centered": True, "momentum": 0.9},
            ("square_avg", "grad_avg", "momentum_buffer"),
            torch_fused=False,
        ),
    )
}
#: "triton" is fused=True run by a child with TRITON_INTERPRET=1 REIMPL_TRITON_CPU=1
PATHS = {
    "loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
    "triton": {"fused": True},
}


@dataclass(frozen=True)
class Malformed:
    """One way a state tensor (``key`` given) or the step counter (``key`` None) is wrong."""

    name: str
    make: Callable[[torch.Tensor, dict[str, Any]], Any]  # (param, its state) -> new value
    step: bool = False  # replaces state['step'] instead of a state tensor
    via_checkpoint: bool = False  # goes through state_dict / load_state_dict
    #: torch's fused kernel can be asked: it survives the case and has no bug there
    torch_fused_safe: bool = True
    #: why reimpl's fused path refuses (RuntimeError) what torch's for-loop computes with
    fused_refuses: str = ""


_FUSED_POLICY = "torch's fused kernels refuse it too (held to them where torch has one)"


def _like(p: torch.Tensor, **kw: Any) -> torch.Tensor:
    return torch.zeros(p.shape, **{"dtype": p.dtype, **kw})


CASES = [
    Malformed("smaller", lambda p, s: torch.zeros(N // 4), torch_fused_safe=False),
    Malformed("larger", lambda p, s: torch.zeros(4 * N), torch_fused_safe=False),
    Malformed("reshaped", lambda p, s: torch.zeros(N // 8, 8), torch_fused_safe=False),
    Malformed(
        "checkpoint smaller",
        lambda p, s: torch.zeros(N // 4),
        via_checkpoint=True,
        torch_fused_safe=False,
    ),
    Malformed(
        "checkpoint larger",
        lambda p, s: torch.zeros(4 * N),
        via_checkpoint=True,
        torch_fused_safe=False,
    ),
    Malformed("float16", lambda p, s: _like(p, dtype=torch.float16), fused_refuses=_FUSED_POLICY),
    Malformed("float64", lambda p, s: _like(p, dtype=torch.float64), fused_refuses=_FUSED_POLICY),
    # torch's Rprop loop computes with an int32 prev (float math, truncated on store)
    Malformed("int32", lambda p, s: _like(p, dtype=torch.int32), fused_refuses=_FUSED_POLICY),
    Malformed(
        "meta",
        lambda p, s: _like(p, device="meta"),
        # torch's Adadelta loop lets a meta acc_delta through (meta in-place ops succeed)
        fused_refuses="a state on another device than its param holds no data to read",
    ),
    Malformed("sparse", lambda p, s: _like(p).to_sparse(), torch_fused_safe=False),
    Malformed("non-contiguous", lambda p, s: torch.zeros(2 * N)[::2]),
    Malformed(
        "aliases the param",
        lambda p, s: p.detach(),
        torch_fused_safe=False,
        fused_refuses="a kernel must not write memory it also reads elsewhere",
    ),
    # torch 2.13's fused SGD trips over a missing momentum buffer (TypeError); its for-loop
    # starts a new one, as reimpl does on every path
    Malformed("missing", lambda p, s: None, torch_fused_safe=False),
    Malformed("step int", lambda p, s: 3, step=True),
    Malformed("step float", lambda p, s: 3.0, step=True),
    Malformed("step int64", lambda p, s: torch.tensor(3), step=True, fused_refuses=_FUSED_POLICY),
    Malformed("step float64", lambda p, s: torch.tensor(3.0, dtype=torch.float64), step=True),
    Malformed(
        "step 2 elements",
        lambda p, s: torch.tensor([3.0, 3.0]),
        step=True,
        fused_refuses=_FUSED_POLICY,
    ),
    Malformed(
        "step meta",
        lambda p, s: torch.tensor(3.0, device="meta"),
        step=True,
        fused_refuses=_FUSED_POLICY,
    ),
    Malformed("extra key", lambda p, s: torch.zeros(3), step=False),
]


def _outcome(fn: Callable[[], torch.Tensor]) -> dict[str, Any]:
    try:
        return {"ok": True, "param": fn()}
    except Exception as e:  # the exception (type and message) is what is compared
        return {"ok": False, "type": type(e).__name__, "msg": str(e)[:300]}


def _scenario(
    module: Any, opt: Optim, path: dict[str, Any], case: Malformed, key: str | None
) -> torch.Tensor:
    """Two params; one good step; param 1's state made malformed; one more step."""
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(N, generator=g)) for _ in range(2)]
    make = getattr(module, opt.name)
    o = make(params, lr=1e-2, **opt.kwargs, **path)
    for p in params:
        p.grad = torch.randn(N, generator=g)
    o.step()
    p = params[1]
    target = "step" if case.step else ("bogus" if case.name == "extra key" else key)
    assert target is not None
    value = case.make(p, o.state[p])
    if case.via_checkpoint:
        sd = o.state_dict()
        sd["state"][1][target] = value
        o = make(params, lr=1e-2, **opt.kwargs, **path)
        o.load_state_dict(sd)
    elif value is None:
        del o.state[p][target]
    else:
        o.state[p][target] = value
    for q in params:
        q.grad = torch.randn(N, generator=g)
    o.step()
    return torch.stack([q.detach().clone() for q in params])


def run(opt_name: str, path_name: str) -> None:
    opt = OPTIMS[opt_name]
    path = PATHS[path_name]
    for case in CASES:
        if case.step and not opt.has_step:
            continue
        keys: tuple[str | None, ...] = (
            (None,) if case.step or case.name == "extra key" else opt.keys
        )
        for key in keys:
            tag = {"case": case.name, "key": key or ("step" if case.step else "bogus")}
            print(json.dumps({"start": tag}), flush=True)
            ours = _outcome(lambda: _scenario(reimpl.optim, opt, path, case, key))  # noqa: B023
            # torch's same path; for fused, torch's own kernel only where it is safe
            fused = path_name in ("fused", "triton")
            ask_fused = fused and opt.torch_fused and case.torch_fused_safe
            oracle_path = path if not fused or ask_fused else PATHS["loop"]
            theirs = _outcome(lambda: _scenario(torch.optim, opt, oracle_path, case, key))  # noqa: B023
            loop = (
                theirs
                if oracle_path is PATHS["loop"]
                else _outcome(
                    lambda: _scenario(torch.optim, opt, PATHS["loop"], case, key)  # noqa: B023
                )
            )
            torch_path = "fused" if ask_fused else ("loop" if fused else path_name)
            row: dict[str, Any] = {**tag, "torch_path": torch_path, "why": case.fused_refuses}
            for side, res in (("ours", ours), ("torch", theirs), ("torch_loop", loop)):
                row[side] = "ok" if res["ok"] else res["type"]
                row[side + "_msg"] = "" if res["ok"] else res["msg"]
            if ours["ok"] and theirs["ok"]:
                row["max_diff"] = float((ours["param"] - theirs["param"]).abs().max())
            print(json.dumps({"done": row}), flush=True)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
