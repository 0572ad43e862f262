"""The likelihood, margin and distance functions beyond the parity table.

* ``torch.func`` where torch itself cannot serve as the oracle under the transform: torch's
  multi margin and multilabel margin kernels have no forward-mode derivative (jvp, jacfwd,
  hessian, dual tensors), its soft margin backward none either (hessian), and its
  ``gaussian_nll_loss`` refuses ``vmap`` (a host read of the variances). reimpl computes
  there; the oracle is torch by another road: per-sample calls for ``vmap``, reverse mode
  (``jacrev``) for the forward-mode transforms, and central differences of torch's
  gradient for the hessian where torch has no double backward (the multi margin losses).
  Every other transform is compared with torch's own, as in ``test_torch_func``.
* 16-bit multi margin / multilabel margin (torch has no CPU kernel): against torch in
  float64 on the same values, to 16-bit precision.
* What torch leaves undefined: an empty batch's reduced multi margin losses.
* The modules: the default distance of ``TripletMarginWithDistanceLoss`` is reimpl's,
  ``PairwiseDistance`` / ``CosineSimilarity`` against torch's; warnings and messages.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as TF
from test_torch_func import TRANSFORMS, Row, _batched, _scalar, _transform
from torch import Tensor
from torch.func import grad, jacrev

import reimpl.nn as RN
import reimpl.nn.functional as RF

DT = torch.float64
g = torch.Generator().manual_seed(3)
X = torch.randn(3, 4, generator=g, dtype=DT)
T = torch.randn(3, 4, generator=g, dtype=DT)
V = torch.rand(3, 4, generator=g, dtype=DT) + 0.2
IDX = torch.tensor([0, 3, 1])
LABELS = torch.tensor([[0, 1, -1, 0], [3, -1, 0, 0], [2, 1, 0, 3]])
W = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=DT)


def _loss(name: str) -> Callable[..., Tensor]:
    return lambda F, *a, **k: getattr(F, name)(*a, **k)


GAP_ROWS = [
    Row("multi_margin", _loss("multi_margin_loss"), (X, IDX)),
    Row("multi_margin_p2_w", _loss("multi_margin_loss"), (X, IDX), {"p": 2, "weight": W}),
    Row("multi_margin_none", _loss("multi_margin_loss"), (X, IDX), {"reduction": "none"}),
    Row("multilabel_margin", _loss("multilabel_margin_loss"), (X, LABELS)),
    Row(
        "multilabel_margin_sum", _loss("multilabel_margin_loss"), (X, LABELS), {"reduction": "sum"}
    ),
    Row("soft_margin", _loss("soft_margin_loss"), (X, T.sign())),
    Row("soft_margin_none", _loss("soft_margin_loss"), (X, T.sign()), {"reduction": "none"}),
    Row("gaussian_nll", _loss("gaussian_nll_loss"), (X, T, V), {}, (0, 1, 2)),
    Row("gaussian_nll_full", _loss("gaussian_nll_loss"), (X, T, V[:, :1]), {"full": True}, (0, 2)),
]


def _tangents(args: tuple[Tensor, ...], argnums: tuple[int, ...]) -> list[Tensor]:
    # as test_torch_func's
    return [
        torch.linspace(-1, 1, args[i].numel(), dtype=args[i].dtype).view_as(args[i])
        for i in argnums
    ]


def _hessian_by_differences(grad_fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Central differences of torch's (piecewise polynomial) gradient, column by column:
    exact but for rounding while no hinge changes sides within the step."""
    h = 1e-6
    cols = []
    for i in range(x.numel()):
        e = torch.zeros_like(x).flatten()
        e[i] = h
        e = e.view_as(x)
        cols.append((grad_fn(x + e) - grad_fn(x - e)) / (2 * h))
    return torch.stack(cols, -1).reshape(*x.shape, *x.shape)


def _oracle(name: str, row: Row) -> Any:
    """torch's value for ``name`` by a road torch supports: per-sample calls for the vmaps,
    reverse mode for the forward-mode transforms."""
    args = tuple(a.clone() for a in row.args)

    def f(*a: Tensor) -> Tensor:
        return row.fn(TF, *a, **row.kwargs)

    def s(*a: Tensor) -> Tensor:
        return _scalar(f(*a))

    argnums = row.diff
    if name in ("vmap", "vmap_grad"):
        batched = [_batched(a) for a in args]
        per = [tuple(b[k] for b in batched) for k in range(2)]
        if name == "vmap":
            return torch.stack([f(*p) for p in per])
        grads = [grad(s, argnums)(*p) for p in per]
        return tuple(torch.stack(gs) for gs in zip(*grads, strict=True))
    if name == "jacfwd":
        return jacrev(f, argnums)(*args)
    if name == "hessian":
        try:
            return jacrev(jacrev(s, 0), 0)(*args)
        except RuntimeError:  # no double backward in torch either: differences of its grad
            return _hessian_by_differences(lambda x: grad(s, 0)(x, *args[1:]), args[0])
    if name in ("jvp", "dual"):
        jac = jacrev(f, argnums)(*args)
        out = f(*args)
        tangent = sum(
            (j.reshape(out.numel(), -1) @ t.reshape(-1)).reshape(out.shape)
            for j, t in zip(jac, _tangents(args, argnums), strict=True)
        )
        return out, tangent
    return _transform(name, row, TF)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("row", GAP_ROWS, ids=lambda r: r.name)
def test_transform_matches_torch_where_torch_cannot(row: Row, transform: str) -> None:
    try:
        ref = _transform(transform, row, TF)
        torch_serves = True
    except (NotImplementedError, RuntimeError):  # no forward AD / no vmap in torch
        ref, torch_serves = _oracle(transform, row), False
    ours = _transform(transform, row, RF)
    where = (
        f"{transform}({row.name}), oracle: {'torch' if torch_serves else 'torch by reverse mode'}"
    )
    torch.testing.assert_close(ours, ref, msg=lambda m: f"{where}: {m}")


def test_torch_lacks_these_transforms() -> None:
    """The gaps the oracle above stands in for (if torch closes one, compare directly)."""
    gaps = set()
    for row in GAP_ROWS:
        for transform in TRANSFORMS:
            try:
                _transform(transform, row, TF)
            except (NotImplementedError, RuntimeError):
                gaps.add((row.name, transform))
    assert ("multi_margin", "jvp") in gaps and ("multilabel_margin", "dual") in gaps
    assert ("soft_margin", "hessian") in gaps and ("gaussian_nll", "vmap") in gaps


# --------------------------------------------------------------------------- 16-bit kernels


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", ["multi_margin_loss", "multilabel_margin_loss"])
def test_16_bit_margin_losses_where_torch_has_no_cpu_kernel(
    name: str, reduction: str, dtype: torch.dtype
) -> None:
    x = X.to(dtype).requires_grad_()
    target = IDX if name == "multi_margin_loss" else LABELS
    with pytest.raises(NotImplementedError):
        getattr(TF, name)(x, target, reduction=reduction)
    ours = getattr(RF, name)(x, target, reduction=reduction)
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    x64 = x.detach().double().requires_grad_()
    ref = getattr(TF, name)(x64, target, reduction=reduction)
    (g_ref,) = torch.autograd.grad(ref.sum(), x64)
    assert ours.dtype == g_ours.dtype == dtype
    tol = {"rtol": 1.6e-2, "atol": 1e-3}  # one 16-bit rounding of each term and of the sum
    torch.testing.assert_close(ours.double(), ref, **tol)
    torch.testing.assert_close(g_ours.double(), g_ref, **tol)


# --------------------------------------------------------------------------- edges


@pytest.mark.parametrize("name", ["multi_margin_loss", "multilabel_margin_loss"])
def test_empty_batch_is_defined(name: str) -> None:
    """torch returns whatever memory held for a reduced empty batch; reimpl the sum of
    nothing (0) and its mean (nan), as the other losses give."""
    x = torch.empty(0, 4, requires_grad=True)
    target = torch.empty(0, dtype=torch.long) if name == "multi_margin_loss" else x.long()
    fn = getattr(RF, name)
    assert fn(x, target, reduction="sum").item() == 0
    assert torch.isnan(fn(x, target, reduction="mean"))
    assert fn(x, target, reduction="none").shape == (0,)
    assert fn(x, target, reduction="sum").requires_grad


def test_kl_div_mean_warns_like_torch_and_batchmean_does_not() -> None:
    x, t = torch.randn(3, 4).log_softmax(1), torch.rand(3, 4)
    for F in (TF, RF):
        with pytest.warns(UserWarning, match="batchmean"):
            F.kl_div(x, t)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            F.kl_div(x, t, reduction="batchmean")


def test_kl_div_legacy_flags_with_batchmean_divide_as_torch() -> None:
    """torch decides the terms' reduction by the legacy flags, then still divides by the
    batch size because reduction='batchmean': reimpl gives the same number."""
    x, t = torch.randn(3, 4), torch.rand(3, 4)
    kw = {"size_average": False, "reduction": "batchmean"}
    with pytest.warns(UserWarning):
        ours = RF.kl_div(x, t, **kw)  # type: ignore[arg-type]
    with pytest.warns(UserWarning):
        ref = TF.kl_div(x, t, **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(ours, ref)


def test_gaussian_nll_under_vmap_skips_the_host_check() -> None:
    """A vmapped call cannot read the variances on the host: the negative-variance check
    is skipped there (as reimpl's other data checks are), and the loss computed."""
    out = torch.func.vmap(lambda v: RF.gaussian_nll_loss(X, T, v))(torch.stack([V, V * 2]))
    assert out.shape == (2,) and torch.isfinite(out).all()


def test_default_distance_is_reimpls() -> None:
    m = RN.TripletMarginWithDistanceLoss()
    assert type(m.distance_function) is RN.PairwiseDistance
    assert isinstance(m.distance_function, torch.nn.PairwiseDistance)


@pytest.mark.parametrize(
    ("make", "args"),
    [
        (lambda ns: ns.PairwiseDistance(p=1.0, eps=0.0, keepdim=True), (X, T)),
        (lambda ns: ns.PairwiseDistance(), (X, T[0])),
        (lambda ns: ns.CosineSimilarity(dim=0, eps=1e-3), (X, T)),
        (lambda ns: ns.CosineSimilarity(), (X, T[:1])),
    ],
)
def test_distance_modules_match_torch(make: Callable[[ModuleType], Any], args: tuple) -> None:
    ours, theirs = make(RN), make(torch.nn)
    assert repr(ours) == repr(theirs) and vars(ours).keys() == vars(theirs).keys()
    torch.testing.assert_close(ours(*args), theirs(*args))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: RF.multi_margin_loss(X, torch.tensor([0, 4, 1])), r"\[0, 4\)"),
        (lambda: RF.multi_margin_loss(X, IDX, p=3), "p = 1 and p = 2"),
        (lambda: RF.gaussian_nll_loss(X, T, torch.ones(2)), "does not fit input of size"),
        (lambda: RF.gaussian_nll_loss(X, T, -1.0), ">= 0"),
        (lambda: RF.cosine_embedding_loss(X, T, torch.ones(3, 1)), "0-D or 1-D target"),
        (lambda: RF.triplet_margin_loss(X, T, V, margin=0.0), "margin must be > 0"),
        (lambda: RF.soft_margin_loss(X[0], torch.ones(3, 4)), "must broadcast to the input"),
        (lambda: RF.kl_div(X, torch.ones(3, 4, dtype=torch.long)), "floating point"),
    ],
)
def test_error_messages_say_what_is_wrong(call: Callable[[], object], match: str) -> None:
    with pytest.raises(Exception, match=match):
        call()
