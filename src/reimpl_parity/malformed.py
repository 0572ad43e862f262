"""Malformed optimizer state, as a corrupted or mismatched checkpoint brings it, on every
path of every optimizer -- run in a child process.

A native kernel handed a state tensor that does not fit its parameter writes past a heap
block and kills the process; so the cases run here, in a child interpreter (``python -m
reimpl_parity.malformed PATH [OPTIMIZER ...]``: every optimizer that has that path, or the
ones named), printing one JSON line as each case starts and one with its outcome. The test
reads the lines: a child that dies shows the case it died in, and the test starts another
child for the optimizers after it. One child per path, not per (optimizer, path): the
interpreter's start and torch's import cost more than a path's cases.

For each case the outcome is recorded for reimpl's path and for torch on the same path
(the for-loop and foreach paths; torch's fused kernels only where they are memory safe,
since torch 2.13's crash on a wrong size too), so the test can hold reimpl to torch's
exception type. Where both compute, the largest difference between the two updated
parameters is recorded.

Three optimizers step differently, and their scenarios say so: Muon takes matrices and
has one path; SparseAdam takes sparse gradients (rows of an embedding table, one listed
twice) and has one path; L-BFGS steps with a closure and keeps one state for the whole
flat parameter vector on the first param (its direction ``d``, step ``t``, the histories
``old_dirs`` / ``old_stps`` / ``ro`` / ``al``, counters and scalars), which its cases
corrupt key by key, with or without its line search.
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
class Malformed:
    """One way a state value (``key`` given) or the step counter (``key`` None) is wrong."""

    name: str
    #: (what the state should look like, the param's state) -> the new value; what it
    #: should look like is the param, or for L-BFGS the value the state holds under the key
    make: Callable[[Any, dict[str, Any]], Any]
    step: bool = False  # replaces state['step'] instead of a state tensor
    via_checkpoint: bool = False  # goes through state_dict / load_state_dict
    #: torch's fused kernel can be asked: it survives the case and has no bug there
    torch_fused_safe: bool = True
    #: why reimpl's fused path refuses (RuntimeError) what torch's for-loop computes with
    fused_refuses: str = ""
    #: the keys it corrupts (default: the optimizer's state tensors)
    keys: tuple[str, ...] = ()


_FUSED_POLICY = "torch's fused kernels refuse it too (held to them where torch has one)"


def _like(p: torch.Tensor, **kw: Any) -> torch.Tensor:
    return torch.zeros(p.shape, **{"dtype": p.dtype, **kw})


CASES = (
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
    Malformed("non-contiguous", lambda p, s: torch.zeros(2 * p.numel())[::2].view(p.shape)),
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
)

# L-BFGS: the tensor cases above on its flat vectors d and prev_flat_grad (no param has
# their shape, so none to alias), then its lists and numbers, and each of its keys missing
_LBFGS_KEYS = (
    "func_evals", "n_iter", "d", "t", "old_dirs", "old_stps", "ro", "H_diag",
    "prev_flat_grad", "prev_loss", "al",
)  # fmt: skip
_LISTS = ("old_dirs", "old_stps", "ro", "al")
LBFGS_CASES = (
    *(c for c in CASES if not c.step and c.name not in ("aliases the param", "missing")),
    Malformed("missing", lambda v, s: None, keys=_LBFGS_KEYS),
    Malformed(
        "number as a tensor",
        lambda v, s: torch.tensor(v),
        keys=("func_evals", "n_iter", "prev_loss"),
    ),
    Malformed("count as a float", lambda v, s: float(v), keys=("func_evals", "n_iter")),
    Malformed("count restarted", lambda v, s: 0, keys=("n_iter",)),
    Malformed("2 elements", lambda v, s: torch.ones(2), keys=("t", "H_diag", "prev_loss")),
    Malformed("a tuple", lambda v, s: tuple(v), keys=_LISTS),
    Malformed("shorter", lambda v, s: v[:-1], keys=_LISTS),
    Malformed("longer than history_size", lambda v, s: v + v, keys=_LISTS[:3]),
    Malformed("entry smaller", lambda v, s: [*v[:-1], torch.zeros(N // 4)], keys=_LISTS[:2]),
    Malformed("entry float64", lambda v, s: [*v[:-1], v[-1].double()], keys=_LISTS[:3]),
    Malformed("entry a number", lambda v, s: [*v[:-1], float(v[-1])], keys=_LISTS[2:3]),
)


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
    paths: tuple[str, ...] = ("loop", "foreach", "fused", "triton")
    shape: tuple[int, ...] = (N,)  # each param's
    sparse_grads: bool = False  # rows of a table, as nn.Embedding(sparse=True) gives
    closure: bool = False  # L-BFGS: steps with a closure, one state on the first param
    cases: tuple[Malformed, ...] = CASES


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
        # a 4 x 16 matrix: "reshaped" (8 x 8) and "smaller" (16, broadcastable) stay wrong
        Optim(
            "Muon",
            {},
            ("momentum_buffer",),
            has_step=False,
            torch_fused=False,
            paths=("default",),
            shape=(4, N // 4),
        ),
        Optim(
            "SparseAdam",
            {},
            ("exp_avg", "exp_avg_sq"),
            torch_fused=False,
            paths=("default",),
            shape=(N // 4, 4),
            sparse_grads=True,
        ),
        Optim(
            "LBFGS",
            {"max_iter": 8, "history_size": 3},  # a full history (shifting, without line search)
            ("d", "prev_flat_grad"),
            has_step=False,
            torch_fused=False,
            paths=("default", "strong_wolfe"),
            closure=True,
            cases=LBFGS_CASES,
        ),
    )
}
#: "triton" is fused=True run by a child with TRITON_INTERPRET=1 REIMPL_TRITON_CPU=1;
#: "default" passes no path keyword (the optimizers that have one path), "strong_wolfe"
#: is L-BFGS with its line search
PATHS: dict[str, dict[str, Any]] = {
    "loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
    "triton": {"fused": True},
    "default": {},
    "strong_wolfe": {"line_search_fn": "strong_wolfe"},
}
FUSED_PATHS = ("fused", "triton")


def units(opt: Optim) -> list[tuple[Malformed, str | None]]:
    """The (case, key) pairs an optimizer runs on each of its paths."""
    out: list[tuple[Malformed, str | None]] = []
    for case in opt.cases:
        if case.step and not opt.has_step:
            continue
        if case.keys:
            out += [(case, k) for k in case.keys]
        elif case.step or case.name == "extra key":
            out.append((case, None))
        else:
            out += [(case, k) for k in opt.keys]
    return out


def _outcome(fn: Callable[[], torch.Tensor]) -> dict[str, Any]:
    try:
        return {"ok": True, "param": fn()}
    except Exception as e:  # the exception (type and message) is what is compared
        return {"ok": False, "type": type(e).__name__, "msg": str(e)[:300]}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest elementwise difference, NaN where both are NaN counting as equal and
    NaN against a number as infinitely far (a plain ``abs().max()`` would be NaN, which
    no tolerance check fails)."""
    same = (a == b) | (a.isnan() & b.isnan())
    return float(torch.where(same, 0.0, (a - b).abs().nan_to_num(nan=float("inf"))).max())


def _grad(opt: Optim, g: torch.Generator) -> torch.Tensor:
    if not opt.sparse_grads:
        return torch.randn(opt.shape, generator=g)
    # half the rows, the first of them listed twice (unsorted and uncoalesced)
    rows = torch.randperm(opt.shape[0], generator=g)[: opt.shape[0] // 2]
    rows = torch.cat([rows, rows[:1]])
    values = torch.randn((len(rows), *opt.shape[1:]), generator=g)
    return torch.sparse_coo_tensor(rows[None], values, opt.shape, check_invariants=True)


def _closure(params: list[torch.nn.Parameter], g: torch.Generator) -> Callable[[], torch.Tensor]:
    """f(x) = sum(w (x - c)^2) + 0.1 sum(x^4): curved enough that L-BFGS's history and
    line search have work, without converging in a few iterations."""
    w = [torch.rand(p.shape, generator=g) + 0.5 for p in params]
    c = [torch.randn(p.shape, generator=g) for p in params]

    def closure() -> torch.Tensor:
        for p in params:
            p.grad = None
        loss = sum(
            ((wi * (p - ci) ** 2).sum() + 0.1 * (p**4).sum())
            for p, wi, ci in zip(params, w, c, strict=True)
        )
        assert isinstance(loss, torch.Tensor)
        loss.backward()
        return loss

    return closure


def _scenario(
    module: Any, opt: Optim, path: dict[str, Any], case: Malformed, key: str | None
) -> torch.Tensor:
    """Two params; one good step; the state malformed (param 1's; L-BFGS's, on param 0);
    one more step."""
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(opt.shape, generator=g)) for _ in range(2)]
    make = getattr(module, opt.name)
    o = make(params, lr=1e-2, **opt.kwargs, **path)
    closure = _closure(params, g) if opt.closure else None

    def step() -> None:
        if closure is not None:
            o.step(closure)
            return
        for q in params:
            q.grad = _grad(opt, g)
        o.step()

    step()
    p = params[0 if opt.closure else 1]
    target = "step" if case.step else ("bogus" if case.name == "extra key" else key)
    assert target is not None
    state = o.state[p]
    value = case.make(state.get(target) if opt.closure else p, state)
    if case.via_checkpoint:
        sd = o.state_dict()
        sd["state"][0 if opt.closure else 1][target] = value
        o = make(params, lr=1e-2, **opt.kwargs, **path)
        o.load_state_dict(sd)
    elif value is None:
        del o.state[p][target]
    else:
        o.state[p][target] = value
    step()
    return torch.stack([q.detach().clone() for q in params])


def run(path_name: str, opt_names: list[str]) -> None:
    path = PATHS[path_name]
    fused = path_name in FUSED_PATHS
    for opt_name in opt_names:
        opt = OPTIMS[opt_name]
        for case, key in units(opt):
            tag = {"optim": opt_name, "case": case.name}
            tag["key"] = key or ("step" if case.step else "bogus")
            print(json.dumps({"start": tag}), flush=True)
            ours = _outcome(lambda: _scenario(reimpl.optim, opt, path, case, key))  # noqa: B023
            # torch's same path; for fused, torch's own kernel only where it is safe
            ask_fused = fused and opt.torch_fused and case.torch_fused_safe
            oracle_path = path if not fused or ask_fused else PATHS["loop"]
            theirs = _outcome(lambda: _scenario(torch.optim, opt, oracle_path, case, key))  # noqa: B023
            torch_path = "fused" if ask_fused else ("loop" if fused else path_name)
            row: dict[str, Any] = {**tag, "torch_path": torch_path, "why": case.fused_refuses}
            sides = [("ours", ours), ("torch", theirs)]
            if fused:  # what torch's for-loop does, which the fused refusals are held to
                loop = (
                    theirs
                    if oracle_path is PATHS["loop"]
                    else _outcome(
                        lambda: _scenario(torch.optim, opt, PATHS["loop"], case, key)  # noqa: B023
                    )
                )
                sides.append(("torch_loop", loop))
            for side, res in sides:
                row[side] = "ok" if res["ok"] else res["type"]
                row[side + "_msg"] = "" if res["ok"] else res["msg"]
            if ours["ok"] and theirs["ok"]:
                row["max_diff"] = _max_diff(ours["param"], theirs["param"])
            print(json.dumps({"done": row}), flush=True)


if __name__ == "__main__":
    path_arg = sys.argv[1]
    names = sys.argv[2:] or [n for n, o in OPTIMS.items() if path_arg in o.paths]
    run(path_arg, names)
