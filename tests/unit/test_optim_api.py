"""Optimizer API parity: signatures, bad input, checkpoints, eager Adagrad state."""

from __future__ import annotations

import inspect
import io
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

import reimpl.optim as ours
from reimpl_parity.compare import compare

NAMES = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW"]


def pair(name: str) -> tuple[type[torch.optim.Optimizer], type[torch.optim.Optimizer]]:
    return getattr(ours, name), getattr(torch.optim, name)


@pytest.mark.parametrize("name", NAMES)
def test_signature_matches_torch(name: str) -> None:
    mine, theirs = pair(name)
    assert issubclass(mine, torch.optim.Optimizer)
    a = dict(inspect.signature(mine).parameters)
    b = inspect.signature(theirs).parameters
    if name == "RMSprop" and "fused" not in b:
        # reimpl's own addition, last so that torch's positional order still holds
        assert list(a)[-1] == "fused" and a.pop("fused").default is None
    assert list(a) == list(b)
    for k in b:
        assert (a[k].kind, a[k].default) == (b[k].kind, b[k].default), k


@pytest.mark.parametrize("name", NAMES)
def test_docstring_gives_the_rule(name: str) -> None:
    doc = pair(name)[0].__doc__ or ""
    assert ".. math::" in doc


def _outcome(fn: Callable[[], Any]) -> tuple[type[BaseException] | None, str, list[type]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn()
        except Exception as e:
            return type(e), str(e), [w.category for w in caught]
    return None, "", [w.category for w in caught]


def _p(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.ones(*shape, dtype=dtype)


# (optimizer, constructor kwargs); the constructor must fail the same way as torch's
BAD_KWARGS: list[tuple[str, dict[str, Any]]] = [
    *[(n, {"lr": -1.0}) for n in NAMES],
    # torch's SGD only rejects lr < 0, so NaN passes there (and in ours)
    *[(n, {"lr": float("nan")}) for n in NAMES if n != "SGD"],
    *[(n, {"weight_decay": -0.1}) for n in NAMES],
    *[(n, {"lr": torch.tensor([0.1, 0.2])}) for n in NAMES],
    *[(n, {"eps": -1e-8}) for n in ["Adagrad", "RMSprop", "Adam", "AdamW"]],
    *[(n, {"fused": True, "foreach": True}) for n in ["SGD", "Adagrad", "Adam", "AdamW"]],
    *[(n, {"fused": True, "differentiable": True}) for n in ["SGD", "Adagrad", "Adam", "AdamW"]],
    ("SGD", {"momentum": -0.5}),
    ("SGD", {"nesterov": True}),
    ("SGD", {"nesterov": True, "momentum": 0.9, "dampening": 0.1}),
    ("Adagrad", {"lr_decay": -1.0}),
    ("Adagrad", {"initial_accumulator_value": -1.0}),
    ("RMSprop", {"alpha": -0.1}),
    ("RMSprop", {"momentum": -0.1}),
    ("SGD", {"capturable": True}),  # SGD has no capturable
    *[(n, {"betas": (1.0, 0.999)}) for n in ["Adam", "AdamW"]],
    *[(n, {"betas": (0.9, -0.1)}) for n in ["Adam", "AdamW"]],
    *[(n, {"betas": (torch.tensor(0.9), 0.999)}) for n in ["Adam", "AdamW"]],
    *[(n, {"betas": (torch.tensor([0.9, 0.8]), torch.tensor(0.9))}) for n in ["Adam", "AdamW"]],
    *[(n, {"betas": (torch.tensor(0.9), torch.tensor(0.99)), "foreach": True}) for n in ["Adam"]],
    *[(n, {"lr": torch.tensor(0.1), "foreach": True}) for n in ["Adam", "AdamW"]],
]


@pytest.mark.parametrize(
    ("name", "kwargs"),
    BAD_KWARGS,
    ids=[f"{i}-{n}-{sorted(k)}" for i, (n, k) in enumerate(BAD_KWARGS)],
)
def test_bad_constructor_args(name: str, kwargs: dict[str, Any]) -> None:
    mine, theirs = pair(name)
    t_err, _, t_warn = _outcome(lambda: theirs([_p(3)], **kwargs))
    o_err, o_msg, o_warn = _outcome(lambda: mine([_p(3)], **kwargs))
    assert t_err is not None, "the table lists only inputs torch rejects"
    assert o_err is t_err, (o_err, o_msg)
    assert o_msg.strip()
    assert o_warn == t_warn


def _sparse_grad(p: torch.Tensor) -> torch.Tensor:
    return torch.sparse_coo_tensor(
        torch.tensor([[0, 0]]), torch.ones(2, dtype=p.dtype), p.shape, check_invariants=True
    )


# (optimizer, kwargs, how to make the grad); the first step must fail the same way
BAD_STEPS: list[tuple[str, dict[str, Any], Callable[[torch.Tensor], torch.Tensor]]] = [
    *[(n, {}, _sparse_grad) for n in ["RMSprop", "Adam", "AdamW"]],
    ("Adagrad", {"weight_decay": 0.1}, _sparse_grad),
    ("Adagrad", {"fused": True}, _sparse_grad),
    ("SGD", {"fused": True}, _sparse_grad),
    *[(n, {"capturable": True}, torch.ones_like) for n in ["RMSprop", "Adam", "AdamW"]],
    *[(n, {"differentiable": True, "foreach": True}, torch.ones_like) for n in NAMES[1:]],
]


@pytest.mark.parametrize(
    ("name", "kwargs", "grad"),
    BAD_STEPS,
    ids=[f"{n}-{sorted(k)}-{getattr(g, '__name__', '')}" for n, k, g in BAD_STEPS],
)
def test_bad_step(name: str, kwargs: dict[str, Any], grad: Callable[..., torch.Tensor]) -> None:
    mine, theirs = pair(name)
    results = []
    for cls in (theirs, mine):
        p = _p(4)
        opt = cls([p], **kwargs)
        p.grad = grad(p)
        results.append(_outcome(opt.step))
    (t_err, _, _), (o_err, o_msg, _) = results
    assert t_err is not None
    assert o_err is t_err, (o_err, o_msg)
    assert o_msg.strip()


@pytest.mark.parametrize("kwargs", [{"foreach": True}, {"differentiable": True}])
def test_rmsprop_fused_conflicts_like_torch_adam(kwargs: dict[str, Any]) -> None:
    # torch's RMSprop has no fused (it would say TypeError): ours refuses as torch's Adam does
    t_err, _, _ = _outcome(lambda: torch.optim.Adam([_p(3)], fused=True, **kwargs))
    o_err, o_msg, _ = _outcome(lambda: ours.RMSprop([_p(3)], fused=True, **kwargs))
    assert t_err is not None and o_err is t_err and o_msg.strip()


@pytest.mark.parametrize("name", NAMES)
def test_fused_rejects_integer_params(name: str) -> None:
    mine, theirs = pair(name)
    if name == "RMSprop":  # torch's RMSprop has no fused: hold ours to what torch's Adam does
        theirs = torch.optim.Adam
    errs = []
    for cls in (theirs, mine):
        p = torch.ones(3, dtype=torch.int64)
        p.grad = torch.ones(3, dtype=torch.int64)
        errs.append(_outcome(lambda cls=cls, p=p: cls([p], fused=True).step())[0])
    assert errs[0] is not None and errs[1] is errs[0]


@pytest.mark.parametrize("name", NAMES)
def test_duplicate_params_warn_like_torch(name: str) -> None:
    mine, theirs = pair(name)
    p = _p(3)
    assert _outcome(lambda: mine([p, p]))[2] == _outcome(lambda: theirs([p, p]))[2]
    q = _p(3)
    t = _outcome(lambda: theirs([{"params": [q]}, {"params": [q]}]))
    o = _outcome(lambda: mine([{"params": [q]}, {"params": [q]}]))
    assert t[0] is not None and o[0] is t[0]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("direction", ["ours->torch", "torch->ours"])
def test_checkpoint_roundtrip_mid_run(name: str, direction: str) -> None:
    """Train 5 steps, save, load with weights_only=True into the other implementation,
    train 5 more: identical to 10 steps of torch alone."""
    mine, theirs = pair(name)
    kw: dict[str, Any] = {"lr": 0.05}
    if name in ("SGD", "RMSprop"):
        kw["momentum"] = 0.9
    if name in ("Adam", "AdamW"):
        kw["amsgrad"] = True
    first, second = (mine, theirs) if direction == "ours->torch" else (theirs, mine)
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(3, 2, generator=g), torch.randn(4, generator=g)]
    grads = [[torch.randn(t.shape, generator=g) for t in init] for _ in range(10)]

    def train(opt: torch.optim.Optimizer, ps: list[torch.Tensor], steps: range) -> None:
        for s in steps:
            for p, gr in zip(ps, grads[s], strict=True):
                p.grad = gr.clone()
            opt.step()

    ref = [t.clone() for t in init]
    ref_opt = theirs(ref, **kw)
    train(ref_opt, ref, range(10))

    ps = [t.clone() for t in init]
    opt = first(ps, **kw)
    train(opt, ps, range(5))
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    opt2 = second(ps, **kw)
    opt2.load_state_dict(sd)
    train(opt2, ps, range(5, 10))
    compare(ps, ref, rtol=0, atol=0, what="params")
    compare(opt2.state_dict(), ref_opt.state_dict(), rtol=0, atol=0, what="state_dict")


def test_adagrad_state_exists_before_first_step() -> None:
    p, q = _p(2), _p(2)
    compare(
        ours.Adagrad([p], initial_accumulator_value=0.3).state_dict(),
        torch.optim.Adagrad([q], initial_accumulator_value=0.3).state_dict(),
        rtol=0,
        atol=0,
        what="state_dict",
    )


@pytest.mark.parametrize("name", NAMES)
def test_state_keys_and_dtypes(name: str) -> None:
    mine, theirs = pair(name)
    states = []
    for cls in (mine, theirs):
        p = torch.ones(3, dtype=torch.float16)
        kw: dict[str, Any] = {"momentum": 0.5} if name in ("SGD", "RMSprop") else {}
        opt = cls([p], **kw)
        p.grad = torch.ones_like(p)
        opt.step()
        states.append({k: (v.dtype, v.device, v.shape) for k, v in opt.state[p].items()})
    assert states[0] == states[1]


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "RMSprop", "Adam"])
def test_differentiable_step_gradients(name: str) -> None:
    """differentiable=True: autograd flows through the update (w.r.t. params and lr)."""
    mine, theirs = pair(name)
    results = []
    for cls in (theirs, mine):
        w = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
        lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=name == "SGD")
        p = w.clone()
        p.grad = torch.linspace(0.5, -0.3, 5, dtype=torch.float64)
        kw: dict[str, Any] = {"momentum": 0.9} if name == "SGD" else {}
        opt = cls([p], lr=lr, differentiable=True, foreach=False, **kw)
        opt.step()
        inputs = [w, lr] if lr.requires_grad else [w]
        results.append(torch.autograd.grad((p * p).sum(), inputs))
    compare(list(results[1]), list(results[0]), rtol=1e-12, atol=1e-12, what="grads")


MODULES = {
    "SGD": ("reimpl.optim.sgd", "sgd"),
    "Adagrad": ("reimpl.optim.adagrad", "adagrad"),
    "RMSprop": ("reimpl.optim.rmsprop", "rmsprop"),
    "Adam": ("reimpl.optim.adam", "adam"),
    "AdamW": ("reimpl.optim.adam", "adam"),
}


def _paths_taken(
    monkeypatch: pytest.MonkeyPatch, name: str, device: str, **kwargs: Any
) -> list[str]:
    import importlib

    module_name, short = MODULES[name]
    mod = importlib.import_module(module_name)
    taken: list[str] = []
    # the two torch-op forms live in the optimizer's module, the fused routine is shared
    spied = [(mod, f"_{path}_{short}", path) for path in ("single_tensor", "multi_tensor")]
    spied.append((importlib.import_module("reimpl.optim.optimizer"), "fused_step", "fused"))
    for owner, fn_name, path in spied:
        real = getattr(owner, fn_name)

        def spy(*a: Any, _real: Any = real, _path: str = path, **k: Any) -> None:
            taken.append(_path)
            _real(*a, **k)

        monkeypatch.setattr(owner, fn_name, spy)
    p = torch.ones(3, device=device)
    opt = getattr(ours, name)([p], **kwargs)
    p.grad = torch.ones_like(p)
    opt.step()
    return taken


@pytest.mark.parametrize("name", NAMES)
def test_path_selection_on_cpu(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """CPU default: the per-tensor loop (as torch); explicit flags are respected."""
    assert _paths_taken(monkeypatch, name, "cpu") == ["single_tensor"]
    assert _paths_taken(monkeypatch, name, "cpu", foreach=True) == ["multi_tensor"]
    assert _paths_taken(monkeypatch, name, "cpu", fused=True) == ["fused"]


@pytest.mark.cuda
@pytest.mark.parametrize("name", NAMES)
def test_path_selection_on_cuda(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """CUDA default: multi-tensor, unless differentiable (as torch)."""
    assert _paths_taken(monkeypatch, name, "cuda") == ["multi_tensor"]
    assert _paths_taken(monkeypatch, name, "cuda", foreach=False) == ["single_tensor"]
    if name != "SGD":  # torch's SGD picks its default without looking at differentiable
        taken = _paths_taken(monkeypatch, name, "cuda", differentiable=True)
        assert taken == ["single_tensor"]


@pytest.mark.parametrize("name", NAMES)
def test_hooks_pickle_and_add_param_group(name: str) -> None:
    """torch's base-class machinery works unchanged on ours."""
    import pickle

    calls: list[str] = []
    p, q = _p(3), _p(2)
    opt = getattr(ours, name)([p])
    opt.register_step_pre_hook(lambda *a: calls.append("pre"))
    opt.register_step_post_hook(lambda *a: calls.append("post"))
    opt.add_param_group({"params": [q], "lr": 0.5})
    p.grad, q.grad = torch.ones_like(p), torch.ones_like(q)
    opt.step()
    assert calls == ["pre", "post"]
    assert opt.param_groups[1]["lr"] == 0.5
    assert len(opt.state) == (0 if name == "SGD" else 2)  # SGD without momentum: no state
    clone = pickle.loads(pickle.dumps(opt))
    assert type(clone) is type(opt)
    compare(clone.state_dict(), opt.state_dict(), rtol=0, atol=0, what="pickled state")
    opt.zero_grad()
    assert p.grad is None
