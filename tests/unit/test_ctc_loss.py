"""CTC loss beyond the parity table (which draws small T, N, C against torch): closed forms
from the paper, long sequences, the alignments that need a blank, impossible ones,
torch.func transforms, double backward and forward mode, the module (signature,
attributes, TorchScript, copies), and the two places where reimpl deliberately differs
from torch (non-contiguous concatenated targets, labels outside the classes)."""

from __future__ import annotations

import copy
import inspect
import io
import pickle
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as TF
from torch import Tensor
from torch.autograd import forward_ad
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap

import reimpl.nn as RN
import reimpl.nn.functional as RF

DT = torch.float64


def _log_probs(t: int, n: int, c: int, seed: int = 0, dtype: torch.dtype = DT) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, n, c, generator=g, dtype=DT).log_softmax(2).to(dtype)


def _both(
    lp: Tensor, *args: Any, **kwargs: Any
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(loss, d loss / d log_probs) from reimpl and from torch, same inputs."""
    out = []
    for F in (RF, TF):
        x = lp.clone().requires_grad_()
        loss = F.ctc_loss(x, *args, **kwargs)
        g = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).view_as(loss)
        (dx,) = torch.autograd.grad(loss, x, g)
        out.append((loss.detach(), dx))
    return out[0], out[1]


def _assert_same(ours: Any, theirs: Any, **tol: float) -> None:
    torch.testing.assert_close(ours, theirs, equal_nan=True, **tol)


# --------------------------------------------------------------------------- the loss


def test_closed_form_two_steps_one_label() -> None:
    """T = 2, target (1): the alignments 11, b1, 1b, so p = y1 y1' + yb y1' + y1 yb'."""
    lp = _log_probs(2, 1, 3)
    y = lp.exp()[:, 0]
    p = y[0, 1] * y[1, 1] + y[0, 0] * y[1, 1] + y[0, 1] * y[1, 0]
    ours = RF.ctc_loss(lp, torch.tensor([[1]]), (2,), (1,), reduction="sum")
    torch.testing.assert_close(ours, -p.log())
    torch.testing.assert_close(
        ours, TF.ctc_loss(lp, torch.tensor([[1]]), (2,), (1,), reduction="sum")
    )


@pytest.mark.parametrize(("t", "finite"), [(2, False), (3, True), (4, True)])
def test_repeated_labels_need_a_blank_between(t: int, finite: bool) -> None:
    """Target (1, 1): "11" collapses to one label, so it takes 1 b 1 -- three steps."""
    lp = _log_probs(t, 1, 3)
    (ours, dours), (theirs, dtheirs) = _both(
        lp, torch.tensor([[1, 1]]), (t,), (2,), reduction="none"
    )
    assert bool(torch.isfinite(ours).all()) == finite
    _assert_same(ours, theirs)
    _assert_same(dours, dtheirs)
    if t == 3:  # a single alignment
        y = lp.exp()[:, 0]
        torch.testing.assert_close(ours[0], -(y[0, 1] * y[1, 0] * y[2, 1]).log())


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_impossible_alignment(reduction: str, zero_infinity: bool) -> None:
    """Sample 0's target is longer than its input: inf (0 with zero_infinity, and a zero
    gradient); the others are untouched. 'mean' divides an empty target by 1."""
    lp = _log_probs(5, 3, 4)
    targets = torch.tensor([[1, 2, 3], [1, 1, 0], [2, 0, 0]])
    args = (targets, torch.tensor([2, 5, 4]), torch.tensor([3, 2, 0]))
    kw = {"reduction": reduction, "zero_infinity": zero_infinity}
    (ours, dours), (theirs, dtheirs) = _both(lp, *args, **kw)
    _assert_same(ours, theirs)
    _assert_same(dours, dtheirs)
    if reduction == "none":
        assert ours[0] == (0 if zero_infinity else torch.inf)
    if zero_infinity:
        assert bool((dours[:, 0] == 0).all())


@pytest.mark.parametrize(
    ("t", "n", "c", "s"), [(50, 16, 20, 10), (120, 4, 30, 40), (200, 2, 5, 60)]
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_long_sequences(t: int, n: int, c: int, s: int, dtype: torch.dtype) -> None:
    """Longer than the parity table draws, padded and concatenated targets."""
    g = torch.Generator().manual_seed(t)
    lp = _log_probs(t, n, c, seed=t, dtype=dtype)
    tl = torch.randint(s // 2, s + 1, (n,), generator=g)
    il = torch.randint(max(t - 10, 1), t + 1, (n,), generator=g)
    padded = torch.randint(1, c, (n, s), generator=g)
    concatenated = torch.cat([padded[i, : tl[i]] for i in range(n)])
    # float32: the gradient's second term is exp(ln sum alpha beta + loss - ln y), a sum of
    # two numbers of about the loss's size (hundreds here): its rounding is a few ulp of the
    # loss, which the last-ulp differences of exp/log between torch's scalar loop and our
    # vectorized ops carry into the gradient
    tol = {"rtol": 1.3e-6, "atol": 1e-4} if dtype == torch.float32 else {}
    for targets in (padded, concatenated):
        for reduction in ("none", "mean"):
            (ours, dours), (theirs, dtheirs) = _both(lp, targets, il, tl, reduction=reduction)
            _assert_same(ours, theirs, **tol)
            _assert_same(dours, dtheirs, **tol)


def test_gradient_is_torchs_softmax_form() -> None:
    """torch's gradient is eq. (16): the derivative with respect to the logits under a
    softmax, y - posterior, not -posterior (the derivative with respect to log_probs):
    on raw, unnormalized values too we give torch's."""
    lp = torch.randn(6, 2, 4, dtype=DT, generator=torch.Generator().manual_seed(3))
    args = (torch.tensor([[1, 2], [3, 3]]), (6, 5), (2, 2))
    (_, dours), (_, dtheirs) = _both(lp, *args, reduction="sum")
    _assert_same(dours, dtheirs)
    logits = lp.clone().requires_grad_()
    RF.ctc_loss(RF.log_softmax(logits, 2), *args, reduction="sum").backward()
    assert logits.grad is not None  # through a log-softmax: the plain derivative
    x = RF.log_softmax(lp, 2).detach().requires_grad_()
    RF.ctc_loss(x, *args, reduction="sum").backward()
    assert x.grad is not None
    _assert_same(x.grad, logits.grad)


@pytest.mark.parametrize(
    "targets",
    [[[0, 1, 0], [2, 0, 0]], [[1, 2, 0], [0, 0, 0]], [[1, 1, 1], [2, 1, 2]]],
    ids=["blank inside", "blank last", "repeats"],
)
def test_targets_holding_the_blank_or_repeats(targets: list[list[int]]) -> None:
    """Labels equal to the blank are not an alignment torch forbids: it computes, and
    where the last label is the blank its gradient keeps that label's term alone at the
    last step; reimpl gives the same numbers. Repeated labels sum one class over several
    positions, in torch's order."""
    lp = _log_probs(7, 2, 3, seed=5)
    args = (torch.tensor(targets), (7, 6), (3, 2))
    (ours, dours), (theirs, dtheirs) = _both(lp, *args, reduction="none")
    _assert_same(ours, theirs)
    _assert_same(dours, dtheirs)


def test_non_contiguous_concatenated_targets_read_as_given() -> None:
    """torch steps through a non-contiguous 1-D int64 target by its stride inside a sample
    but not between samples (a torch bug); reimpl reads the labels the tensor holds, as
    torch does for the same labels contiguous."""
    lp = _log_probs(4, 2, 5)
    targets = torch.tensor([1, 9, 2, 9, 3, 9])[::2]
    ours = RF.ctc_loss(lp, targets, (4, 4), (1, 2), reduction="none")
    _assert_same(ours, TF.ctc_loss(lp, targets.contiguous(), (4, 4), (1, 2), reduction="none"))


def test_label_outside_the_classes_is_refused() -> None:
    """torch reads outside log_probs there (undefined); reimpl raises IndexError. Padding
    past a target's length is never read, whatever it holds."""
    lp = _log_probs(4, 2, 3)
    with pytest.raises(IndexError, match="out of range"):
        RF.ctc_loss(lp, torch.tensor([[1, 3], [1, 1]]), (4, 4), (2, 1))
    padded = torch.tensor([[1, -1], [2, 7]])
    ours = RF.ctc_loss(lp, padded, (4, 4), (1, 1), reduction="none")
    _assert_same(ours, TF.ctc_loss(lp, padded, (4, 4), (1, 1), reduction="none"))


def test_double_backward_raises_like_torch() -> None:
    """torch's CTC backward has no derivative; ours raises the same RuntimeError."""
    lp = _log_probs(5, 2, 4)
    args = (torch.tensor([[1, 2], [3, 1]]), (5, 4), (2, 2))
    for F in (RF, TF):
        x = lp.clone().requires_grad_()
        (g,) = torch.autograd.grad(F.ctc_loss(x, *args), x, create_graph=True)
        with pytest.raises(RuntimeError):
            torch.autograd.grad(g.sum(), x)


# --------------------------------------------------------------------------- torch.func

LP = _log_probs(5, 3, 4, seed=1)
TG = torch.tensor([[1, 2, 2], [3, 1, 0], [2, 2, 2]])
IL, TL = torch.tensor([5, 4, 5]), torch.tensor([3, 2, 2])


def _stack2(a: Tensor) -> Tensor:
    return torch.stack([a, a.flip(0)])


def _transform(name: str, F: ModuleType, kw: dict[str, Any]) -> Any:
    def f(x: Tensor, *rest: Tensor) -> Tensor:
        return F.ctc_loss(x, *rest, **kw)

    def scalar(x: Tensor) -> Tensor:
        return f(x, TG, IL, TL).sum()

    if name == "vmap":  # every argument batched: targets and lengths differ per call
        return vmap(f)(_stack2(LP), _stack2(TG), _stack2(IL), TL.flip(0).expand(2, 3))
    if name == "vmap_over_log_probs":
        return vmap(lambda x: f(x, TG, IL, TL))(_stack2(LP))
    if name == "grad":
        return grad(scalar)(LP)
    if name == "vmap_grad":
        return vmap(grad(scalar))(_stack2(LP))
    if name == "jacrev":
        return jacrev(lambda x: f(x, TG, IL, TL))(LP)
    if name == "jacfwd":
        return jacfwd(scalar)(LP)
    if name == "jvp":
        return jvp(scalar, (LP,), (torch.ones_like(LP),))
    if name == "hessian":
        return hessian(scalar)(LP)
    with forward_ad.dual_level():  # "dual"
        return forward_ad.unpack_dual(scalar(forward_ad.make_dual(LP, LP.clone()))).tangent


TRANSFORMS = [
    "vmap",
    "vmap_over_log_probs",
    "grad",
    "vmap_grad",
    "jacrev",
    "jacfwd",
    "jvp",
    "hessian",
    "dual",
]


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize(
    "kw", [{}, {"reduction": "none", "zero_infinity": True}], ids=["mean", "none"]
)
def test_torch_func_matches_torch(transform: str, kw: dict[str, Any]) -> None:
    """torch supports vmap, grad and jacrev of ctc_loss and refuses forward mode
    (NotImplementedError); reimpl gives the same values and the same refusals."""
    outcomes = []
    for F in (TF, RF):
        try:
            outcomes.append(_transform(transform, F, kw))
        except Exception as e:  # compared below
            outcomes.append(e)
    theirs, ours = outcomes
    if isinstance(theirs, Exception) or isinstance(ours, Exception):
        assert type(ours) is type(theirs), (transform, theirs, ours)
        return
    _assert_same(ours, theirs)


# --------------------------------------------------------------------------- the module


def _params(fn: Callable[..., Any]) -> list[tuple[str, Any]]:
    return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]


def test_module_signature_attributes_and_identity() -> None:
    assert _params(RN.CTCLoss.__init__) == _params(torch.nn.CTCLoss.__init__)
    assert [n for n, _ in _params(RN.CTCLoss.forward)] == [
        n for n, _ in _params(torch.nn.CTCLoss.forward)
    ]
    kw = {"blank": 3, "reduction": "sum", "zero_infinity": True}
    ours, theirs = RN.CTCLoss(**kw), torch.nn.CTCLoss(**kw)
    assert isinstance(ours, torch.nn.CTCLoss)
    for name in ("blank", "reduction", "zero_infinity"):
        assert getattr(ours, name) == getattr(theirs, name)
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    lp = _log_probs(6, 2, 4)
    args = (torch.tensor([[1, 2], [0, 0]]), torch.tensor([6, 5]), torch.tensor([2, 1]))
    torch.testing.assert_close(ours(lp, *args), theirs(lp, *args))


def test_module_copies_and_pickles() -> None:
    m = RN.CTCLoss(blank=2, zero_infinity=True)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    for c in (copy.deepcopy(m), pickle.loads(pickle.dumps(m)), torch.load(buf, weights_only=False)):
        assert type(c) is RN.CTCLoss and repr(c) == repr(m)
        assert (c.blank, c.zero_infinity, c.reduction) == (2, True, "mean")


@pytest.mark.parametrize(
    "kw",
    [{}, {"reduction": "none"}, {"reduction": "sum", "blank": 4, "zero_infinity": True}],
)
@pytest.mark.parametrize("concatenated", [False, True])
def test_scripted_module_matches_eager_and_torch(kw: dict[str, Any], concatenated: bool) -> None:
    """Loss values of our scripted module, our eager module and torch's scripted one; the
    scripted gradient (autograd through the recursion plus the softmax term) is torch's
    wherever torch's formula is finite."""
    lp = _log_probs(6, 3, 5, seed=4).float()
    padded = torch.tensor([[1, 2, 2], [3, 1, 0], [2, 3, 1]])
    tl = torch.tensor([3, 2, 0])
    targets = torch.cat([padded[i, : tl[i]] for i in range(3)]) if concatenated else padded
    args = (targets, torch.tensor([6, 5, 2]), tl)
    ours = torch.jit.script(RN.CTCLoss(**kw))
    theirs = torch.jit.script(torch.nn.CTCLoss(**kw))
    grads = []
    for m in (ours, RN.CTCLoss(**kw), theirs):
        x = lp.clone().requires_grad_()
        loss = m(x, *args)
        loss.sum().backward()
        grads.append((loss.detach(), x.grad))
    _assert_same(grads[0], grads[2])
    _assert_same(grads[1], grads[2])
