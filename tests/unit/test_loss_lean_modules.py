"""LinearCrossEntropyLoss and AdaptiveLogSoftmaxWithLoss as modules: torch's signatures,
parameter names and initialisation (same seed, same parameters), state_dicts both ways,
repr, result type, and every method against torch's module on the same parameters."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch

import reimpl.nn as rnn

TORCH_LCE = getattr(torch.nn, "LinearCrossEntropyLoss", None)
needs_torch_lce = pytest.mark.skipif(TORCH_LCE is None, reason="torch < 2.13 has no such class")


def _params(fn: object) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]  # type: ignore[arg-type]


def _pair(name: str, *args: Any, **kwargs: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ours, torch's), each built right after torch.manual_seed(0)."""
    torch.manual_seed(0)
    ours = getattr(rnn, name)(*args, **kwargs)
    torch.manual_seed(0)
    theirs = getattr(torch.nn, name)(*args, **kwargs)
    return ours, theirs


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def _swap_both_ways(name: str, *args: Any, **kwargs: Any) -> tuple[torch.nn.Module, ...]:
    """A torch checkpoint loaded into ours and ours into torch's (fresh modules, other seed)."""
    _, theirs = _pair(name, *args, **kwargs)
    changed = {k: v + 0.5 for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(changed)
    torch.manual_seed(1)
    ours2 = getattr(rnn, name)(*args, **kwargs)
    ours2.load_state_dict(theirs.state_dict())
    torch.manual_seed(2)
    theirs2 = getattr(torch.nn, name)(*args, **kwargs)
    theirs2.load_state_dict(ours2.state_dict())
    _same_state(ours2, theirs)
    _same_state(theirs2, theirs)
    return ours2, theirs


# --------------------------------------------------------------------- LinearCrossEntropyLoss

LCE_CONFIGS = [
    {},
    {"bias": True, "reduction": "sum", "label_smoothing": 0.1, "ignore_index": 2},
    {"out_features": (2, 3), "bias": True},
    {
        "weight": torch.rand(7, dtype=torch.float64) + 0.1,
        "reduction": "none",
        "dtype": torch.float64,
    },
]


@needs_torch_lce
def test_lce_signature_and_identity() -> None:
    assert _params(rnn.LinearCrossEntropyLoss.__init__) == _params(TORCH_LCE.__init__)
    assert [n for n, _ in _params(rnn.LinearCrossEntropyLoss.forward)] == [
        n for n, _ in _params(TORCH_LCE.forward)
    ]
    assert issubclass(rnn.LinearCrossEntropyLoss, TORCH_LCE)


def test_lce_is_a_module_on_every_torch() -> None:
    m = rnn.LinearCrossEntropyLoss(4, 7)
    assert isinstance(m, torch.nn.Module) and m.linear.weight.shape == (7, 4)
    if TORCH_LCE is None:  # torch 2.12: nothing to subclass but Module
        assert not hasattr(torch.nn, "LinearCrossEntropyLoss")


@needs_torch_lce
@pytest.mark.parametrize("config", LCE_CONFIGS, ids=lambda c: ",".join(c) or "default")
def test_lce_module_matches_torch(config: dict[str, Any]) -> None:
    ours, theirs = _pair("LinearCrossEntropyLoss", 4, 7, **config)
    _same_state(ours, theirs)
    assert repr(ours) == repr(theirs)
    for name in ("num_classes", "out_features", "reduction", "ignore_index", "label_smoothing"):
        assert getattr(ours, name) == getattr(theirs, name), name
    dtype = config.get("dtype", torch.float32)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 4, generator=g, dtype=dtype)
    targets = [torch.randint(0, 7, (5, *config.get("out_features", ())), generator=g)]
    targets.append(
        torch.softmax(
            torch.randn(5, 7, *config.get("out_features", ()), generator=g, dtype=dtype), 1
        )
    )
    for t in targets:
        if t.is_floating_point() and "ignore_index" in config:
            continue  # torch refuses ignore_index with probabilities (a bad-input row)
        outs = []
        for m in (ours, theirs):
            xl = x.clone().requires_grad_()
            m.zero_grad()
            out = m(xl, t)
            out.backward(torch.ones_like(out))
            outs.append([out, xl.grad, *(p.grad for p in m.parameters())])
        torch.testing.assert_close(outs[0], outs[1])


@needs_torch_lce
@pytest.mark.parametrize("config", LCE_CONFIGS[:3], ids=lambda c: ",".join(c) or "default")
def test_lce_state_dict_moves_both_ways(config: dict[str, Any]) -> None:
    ours, theirs = _swap_both_ways("LinearCrossEntropyLoss", 4, 7, **config)
    x = torch.randn(3, 4)
    t = torch.randint(0, 7, (3, *config.get("out_features", ())))
    torch.testing.assert_close(ours(x, t), theirs(x, t))


# --------------------------------------------------------------------- adaptive softmax

ADAPTIVE_CONFIGS = [
    {"in_features": 8, "n_classes": 10, "cutoffs": [3, 6]},
    {
        "in_features": 16,
        "n_classes": 20,
        "cutoffs": (2, 5, 11),
        "div_value": 2.0,
        "head_bias": True,
    },
    {"in_features": 4, "n_classes": 3, "cutoffs": [1], "dtype": torch.float64},
]


def test_adaptive_signature_and_identity() -> None:
    ours, theirs = rnn.AdaptiveLogSoftmaxWithLoss, torch.nn.AdaptiveLogSoftmaxWithLoss
    assert _params(ours.__init__) == _params(theirs.__init__)
    for method in ("forward", "log_prob", "predict"):
        assert [n for n, _ in _params(getattr(ours, method))] == [
            n for n, _ in _params(getattr(theirs, method))
        ]
    assert issubclass(ours, theirs)


def _adaptive_inputs(config: dict[str, Any], n: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, config["in_features"], generator=g, dtype=config.get("dtype"))
    # every cluster hit: the classes cycle through 0 .. n_classes - 1
    t = torch.arange(n) % config["n_classes"]
    return x, t


@pytest.mark.parametrize("config", ADAPTIVE_CONFIGS, ids=lambda c: str(c["cutoffs"]))
def test_adaptive_module_matches_torch(config: dict[str, Any]) -> None:
    ours, theirs = _pair("AdaptiveLogSoftmaxWithLoss", **config)
    _same_state(ours, theirs)
    assert repr(ours) == repr(theirs)
    for name in ("cutoffs", "shortlist_size", "n_clusters", "head_size", "div_value"):
        assert getattr(ours, name) == getattr(theirs, name), name
    x, t = _adaptive_inputs(config)
    results = []
    for m in (ours, theirs):
        xl = x.clone().requires_grad_()
        res = m(xl, t)
        grads = torch.autograd.grad(
            res.loss + res.output.sum(), [xl, *m.parameters()], allow_unused=True
        )
        results.append((type(res), res, grads, m.log_prob(x), m.predict(x), m(x[0], t[0])))
    assert results[0][0] is results[1][0]  # torch's NamedTuple type
    torch.testing.assert_close(results[0][1:], results[1][1:])


@pytest.mark.parametrize("which", ["none", "some", "all"])
def test_adaptive_predict_tail_paths(which: str) -> None:
    """predict's three branches: no row, some rows, every row best in a tail cluster (the
    head's bias pushes its shortlist or its cluster logits up)."""
    config = ADAPTIVE_CONFIGS[1]  # with a head bias
    ours, theirs = _pair("AdaptiveLogSoftmaxWithLoss", **config)
    x, _ = _adaptive_inputs(config, n=12)
    for m in (ours, theirs):
        with torch.no_grad():
            if which == "none":
                m.head.bias[: m.shortlist_size] += 100
            elif which == "all":
                m.head.bias[m.shortlist_size :] += 100
            else:
                m.head.bias[m.shortlist_size + 1] += 0.9
    best = theirs.head(x).argmax(1) >= theirs.shortlist_size
    assert {"none": not best.any(), "some": best.any() and not best.all(), "all": best.all()}[
        which
    ], best
    torch.testing.assert_close(ours.predict(x), theirs.predict(x), rtol=0, atol=0)
    torch.testing.assert_close(ours.predict(x), theirs.log_prob(x).argmax(1), rtol=0, atol=0)


def test_adaptive_reset_parameters_draws_as_torch() -> None:
    ours, theirs = _pair("AdaptiveLogSoftmaxWithLoss", **ADAPTIVE_CONFIGS[1])
    for m in (ours, theirs):
        torch.manual_seed(9)
        m.reset_parameters()
    _same_state(ours, theirs)


@pytest.mark.parametrize("config", ADAPTIVE_CONFIGS[:2], ids=lambda c: str(c["cutoffs"]))
def test_adaptive_state_dict_moves_both_ways(config: dict[str, Any]) -> None:
    ours, theirs = _swap_both_ways("AdaptiveLogSoftmaxWithLoss", **config)
    x, t = _adaptive_inputs(config)
    torch.testing.assert_close(tuple(ours(x, t)), tuple(theirs(x, t)))


def test_torch_modules_do_not_script() -> None:
    """Why neither module has TorchScript rows: torch's own do not script (an annotation of
    ``LinearCrossEntropyOptions`` / a ``Linear`` class attribute it cannot parse). Should a
    torch script them, this fails and the rows belong in test_torchscript.py."""
    modules = [torch.nn.AdaptiveLogSoftmaxWithLoss(8, 10, [3, 6])]
    if TORCH_LCE is not None:
        modules.append(TORCH_LCE(4, 7))
    for m in modules:
        with pytest.raises(Exception):  # noqa: B017 (whichever error torch's compiler raises)
            torch.jit.script(m)
