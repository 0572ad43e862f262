"""torch.func transforms and forward-mode AD: reimpl's functions against torch's own under
the same transform (vmap, grad, vmap(grad), jacrev, jacfwd, jvp, hessian, dual tensors).

One row per function; every row runs under every transform, both sides on clones of the
same float64 inputs, so a row is one (function, transform) pair per test id. Where torch
raises (dropout under a vmap in randomness="error" mode, jacfwd, hessian), reimpl must
raise the same exception type. Tolerances: torch.testing.assert_close's float64 defaults
unless a row says otherwise, with its reason in ``why``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as TF
from torch import Tensor
from torch.autograd import forward_ad
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vmap

import reimpl.nn.functional as RF

DT = torch.float64
g = torch.Generator().manual_seed(0)
X = torch.randn(3, 4, generator=g, dtype=DT)
T = torch.randn(3, 4, generator=g, dtype=DT)
IDX = torch.tensor([0, 3, 1])
P = torch.softmax(torch.randn(3, 4, generator=g, dtype=DT), 1)
U = torch.rand(3, 4, generator=g, dtype=DT) * 0.8 + 0.1
W = torch.rand(4, generator=g, dtype=DT) + 0.5
X4 = torch.randn(3, 2, 3, 3, generator=g, dtype=DT)
C2 = torch.rand(2, generator=g, dtype=DT) + 0.5
X2 = torch.randn(3, 2, generator=g, dtype=DT)  # (N, C) batch norm input: N=3 under vmap


@dataclass(frozen=True)
class Row:
    """``fn(F, *args, **kwargs)`` with F torch's or reimpl's functional module; ``diff``:
    the positions of ``args`` that are differentiated (and given tangents)."""

    name: str
    fn: Callable[..., Tensor]
    args: tuple[Tensor, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    diff: tuple[int, ...] = (0,)
    random: bool = False
    tol: dict[str, float] | None = None
    why: str = ""


def _loss(name: str) -> Callable[..., Tensor]:
    return lambda F, *a, **k: getattr(F, name)(*a, **k)


def _bn_train(F: ModuleType, x: Tensor, w: Tensor, b: Tensor, **k: Any) -> Tensor:
    return F.batch_norm(x, None, None, w, b, training=True, **k)


def _bn_train_running(F: ModuleType, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    rm, rv = torch.zeros_like(w), torch.ones_like(w)  # fresh per call: updated in place
    out = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3)
    return out + 0 * (rm.sum() + rv.sum())


def _bn_eval(F: ModuleType, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return F.batch_norm(x, C2 - 0.5, C2 + 0.25, w, b, training=False)


def _drop(name: str, p: float = 0.4) -> Callable[..., Tensor]:
    return lambda F, x: getattr(F, name)(x, p, True)


ROWS = [
    Row("cross_entropy", _loss("cross_entropy"), (X, IDX)),
    Row(
        "cross_entropy_smooth_w",
        _loss("cross_entropy"),
        (X, IDX),
        {"weight": W, "label_smoothing": 0.2, "reduction": "sum"},
    ),
    Row("cross_entropy_none", _loss("cross_entropy"), (X, IDX), {"reduction": "none"}),
    Row("cross_entropy_probs", _loss("cross_entropy"), (X, P), {"label_smoothing": 0.1}, (0, 1)),
    Row("nll_loss", _loss("nll_loss"), (X, IDX), {"weight": W}),
    Row("log_softmax", lambda F, x: F.log_softmax(x, 1), (X,)),
    Row("log_softmax_dim0", lambda F, x: F.log_softmax(x, dim=0), (X,)),
    Row("binary_cross_entropy", _loss("binary_cross_entropy"), (U, P), {"weight": W}, (0, 1)),
    Row(
        "bce_with_logits",
        _loss("binary_cross_entropy_with_logits"),
        (X, P),
        {"pos_weight": W, "reduction": "sum"},
        (0, 1),
    ),
    Row("bce_with_logits_none", _loss("binary_cross_entropy_with_logits"), (X, P), {}, (0, 1)),
    Row("l1_loss", _loss("l1_loss"), (X, T), {}, (0, 1)),
    Row("mse_loss", _loss("mse_loss"), (X, T), {}, (0, 1)),
    Row("mse_loss_none", _loss("mse_loss"), (X, T), {"reduction": "none"}, (0, 1)),
    Row("smooth_l1_loss", _loss("smooth_l1_loss"), (X, T), {"beta": 0.7}, (0, 1)),
    Row("huber_loss", _loss("huber_loss"), (X, T), {"delta": 0.7, "reduction": "sum"}, (0, 1)),
    # the likelihood and margin losses torch serves under every transform (the others, where
    # torch lacks forward AD or refuses vmap, are in test_likelihood_margin_func)
    Row("kl_div_batchmean", _loss("kl_div"), (X, P), {"reduction": "batchmean"}, (0, 1)),
    Row("kl_div_log_target", _loss("kl_div"), (X, T), {"log_target": True}, (0, 1)),
    Row("poisson_nll_full", _loss("poisson_nll_loss"), (X, U * 3), {"full": True}, (0, 1)),
    Row("margin_ranking", _loss("margin_ranking_loss"), (X, T, (U - 0.5).sign()), {}, (0, 1)),
    Row("hinge_embedding", _loss("hinge_embedding_loss"), (X, T.sign()), {"reduction": "sum"}),
    Row("multilabel_soft_margin", _loss("multilabel_soft_margin_loss"), (X, U), {"weight": W}),
    Row("cosine_embedding", _loss("cosine_embedding_loss"), (X, T, T[:, 0].sign()), {}, (0, 1)),
    Row(
        "triplet_margin",
        _loss("triplet_margin_loss"),
        (X, T, U),
        {"swap": True, "p": 1.5},
        (0, 1, 2),
    ),
    Row(
        "triplet_with_distance",
        _loss("triplet_margin_with_distance_loss"),
        (X, T, U),
        {},
        (0, 1, 2),
    ),
    Row("pairwise_distance", _loss("pairwise_distance"), (X, T), {"keepdim": True}, (0, 1)),
    Row("cosine_similarity", _loss("cosine_similarity"), (X, T), {"dim": 0}, (0, 1)),
    # float32 rows: torch.testing's float32 defaults
    Row("cross_entropy_f32", _loss("cross_entropy"), (X.float(), IDX)),
    Row("log_softmax_f32", lambda F, x: F.log_softmax(x, -1), (X.float(),)),
    Row(
        "bce_with_logits_f32",
        _loss("binary_cross_entropy_with_logits"),
        (X.float(), P.float()),
        {},
        (0, 1),
    ),
    Row("huber_loss_f32", _loss("huber_loss"), (X.float(), T.float()), {}, (0, 1)),
    Row("batch_norm_train", _bn_train, (X4, C2, C2 - 1), {}, (0, 1, 2)),
    Row("batch_norm_train_2d", _bn_train, (X2, C2, C2 - 1), {"eps": 1e-3}, (0, 1, 2)),
    Row("batch_norm_train_running", _bn_train_running, (X4, C2, C2 - 1), {}, (0, 1, 2)),
    Row("batch_norm_eval", _bn_eval, (X4, C2, C2 - 1), {}, (0, 1, 2)),
    Row("dropout", _drop("dropout"), (X,), random=True),
    Row("dropout2d", _drop("dropout2d"), (X4,), random=True),
    Row("alpha_dropout", _drop("alpha_dropout"), (X,), random=True),
    Row("feature_alpha_dropout", _drop("feature_alpha_dropout"), (X4,), random=True),
    Row(
        "instance_norm",
        lambda F, x, w, b: F.instance_norm(x, None, None, w, b),
        (X4, C2, C2 - 1),
        {},
        (0, 1, 2),
    ),
    Row(
        "instance_norm_running",
        lambda F, x, w, b: F.instance_norm(
            x, torch.zeros_like(w), torch.ones_like(w), w, b, momentum=0.3
        ),
        (X4, C2, C2 - 1),
        {},
        (0, 1, 2),
    ),
    Row(
        "instance_norm_eval",
        lambda F, x, w, b: F.instance_norm(x, C2 - 0.5, C2 + 0.25, w, b, use_input_stats=False),
        (X4, C2, C2 - 1),
        {},
        (0, 1, 2),
    ),
    Row("local_response_norm", lambda F, x: F.local_response_norm(x, 3, alpha=0.5, k=1.5), (X4,)),
    Row(
        "local_response_norm_3d",
        lambda F, x: F.local_response_norm(x, 2, alpha=0.5),
        (X4[:, :, 0],),
    ),
    Row(
        "layer_norm",
        lambda F, x, w, b: F.layer_norm(x, [3, 3], w, b),
        (X4, X4[0, 0] + 2, X4[1, 0]),
        {},
        (0, 1, 2),
    ),
    Row("rms_norm", lambda F, x, w: F.rms_norm(x, [4], w), (X, W), {}, (0, 1)),
    Row("rms_norm_eps", lambda F, x: F.rms_norm(x, [3, 4], eps=1e-3), (X,)),
    Row("group_norm", lambda F, x, w, b: F.group_norm(x, 2, w, b), (X4, C2, C2 - 1), {}, (0, 1, 2)),
    Row("group_norm_1", lambda F, x: F.group_norm(x, 1, eps=1e-3), (X4,)),
]
if hasattr(TF, "linear_cross_entropy"):  # torch >= 2.13: the oracle (ours: the composite form)
    LW = torch.randn(5, 4, generator=g, dtype=DT)
    ROWS += [
        Row("linear_cross_entropy", _loss("linear_cross_entropy"), (X, LW, IDX), {}, (0, 1)),
        Row(
            "linear_cross_entropy_smooth_none",
            _loss("linear_cross_entropy"),
            (X, LW, IDX),
            {"linear_bias": LW[:, 0], "label_smoothing": 0.2, "reduction": "none"},
            (0, 1),
        ),
    ]


def _scalar(out: Tensor) -> Tensor:
    return out if out.dim() == 0 else out.sum()


def _batched(a: Tensor) -> Tensor:
    """Two samples for vmap: ``a`` and ``a`` flipped along dim 0 (same value range)."""
    return torch.stack([a, a.flip(0)])


def _transform(name: str, row: Row, F: ModuleType) -> Any:
    args = tuple(a.clone() for a in row.args)

    def f(*a: Tensor) -> Tensor:
        return row.fn(F, *a, **row.kwargs)

    def s(*a: Tensor) -> Tensor:
        return _scalar(f(*a))

    argnums = row.diff
    if row.random:
        torch.manual_seed(1234)
    if name == "vmap":
        return vmap(f)(*map(_batched, args))
    if name == "vmap_grad":
        return vmap(grad(s, argnums))(*map(_batched, args))
    if name == "grad":
        return grad(s, argnums)(*args)
    if name == "jacrev":
        return jacrev(f, argnums)(*args)
    if name == "jacfwd":
        return jacfwd(f, argnums)(*args)
    if name == "hessian":  # w.r.t. the input: the full one is large for 3 arguments
        return hessian(s, 0)(*args)
    tangents = [
        torch.linspace(-1, 1, args[i].numel(), dtype=args[i].dtype).view_as(args[i])
        for i in argnums
    ]
    if name == "jvp":

        def f_diff(*d: Tensor) -> Tensor:
            full = list(args)
            for i, v in zip(argnums, d, strict=True):
                full[i] = v
            return f(*full)

        return jvp(f_diff, tuple(args[i] for i in argnums), tuple(tangents))
    if name == "dual":
        with forward_ad.dual_level():
            full = list(args)
            for i, tangent in zip(argnums, tangents, strict=True):
                full[i] = forward_ad.make_dual(args[i], tangent)
            out = forward_ad.unpack_dual(f(*full))
            return out.primal.clone(), out.tangent.clone()
    raise AssertionError(name)


TRANSFORMS = ["vmap", "grad", "vmap_grad", "jacrev", "jacfwd", "jvp", "hessian", "dual"]


def _outcome(name: str, row: Row, F: ModuleType) -> Any:
    try:
        return _transform(name, row, F)
    except Exception as e:  # compared with torch's below
        return e


def _brief(outcome: Any) -> str:
    if isinstance(outcome, Exception):
        return f"{type(outcome).__name__}: {str(outcome)[:200]}"
    return "a result"


def _describe(name: str, row: Row) -> str:
    shapes = [tuple(a.shape) for a in row.args]
    return f"{name}({row.name}) args shapes={shapes} kwargs={row.kwargs}"


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_transform_matches_torch(row: Row, transform: str) -> None:
    ref = _outcome(transform, row, TF)
    ours = _outcome(transform, row, RF)
    call = _describe(transform, row)
    if isinstance(ref, Exception) or isinstance(ours, Exception):
        assert type(ours) is type(ref), f"{call}: torch gave {_brief(ref)}, reimpl {_brief(ours)}"
        return
    torch.testing.assert_close(ours, ref, **(row.tol or {}), msg=lambda m: f"{call}: {m}")


def test_torch_raises_where_expected() -> None:
    """The rows where torch raises: dropout under vmap's "error" randomness (vmap, jacfwd,
    hessian) and batch norm updating running statistics under vmap."""
    raised = {
        (r.name, t) for r in ROWS for t in TRANSFORMS if isinstance(_outcome(t, r, TF), Exception)
    }
    assert ("dropout", "vmap") in raised and ("dropout", "jacfwd") in raised
    assert all(name.endswith("dropout") or name == "dropout2d" for name, _ in raised), raised


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_vmap_with_captured_running_stats(training: bool) -> None:
    """Unbatched running statistics captured by a vmapped batch norm: torch refuses to
    update them in training (in-place write of a batched value); reimpl must agree."""
    outs: list[Any] = []
    for F in (TF, RF):
        rm, rv = C2 - 0.5, C2 + 0.25
        try:
            out = vmap(
                lambda x, F=F, rm=rm, rv=rv: F.batch_norm(x, rm, rv, C2, C2, training=training)
            )(_batched(X4))
            outs.append((out, rm, rv))
        except RuntimeError as e:
            outs.append(e)
    ref, ours = outs
    call = f"vmap(batch_norm(x, rm, rv, w, b, training={training}))"
    if isinstance(ref, Exception) or isinstance(ours, Exception):
        assert type(ours) is type(ref), f"{call}: torch gave {_brief(ref)}, reimpl {_brief(ours)}"
        return
    torch.testing.assert_close(ours, ref, msg=lambda m: f"{call}: {m}")


@pytest.mark.parametrize("mode", ["error", "different", "same"])
@pytest.mark.parametrize(
    "name", ["dropout", "alpha_dropout", "dropout1d", "dropout2d", "feature_alpha_dropout"]
)
def test_dropout_vmap_randomness(name: str, mode: str) -> None:
    x = torch.randn(2, 4, 5, dtype=DT).expand(3, 2, 4, 5)  # one sample, three times
    outs: list[Any] = []
    for F in (TF, RF):
        torch.manual_seed(7)
        try:
            outs.append(vmap(lambda xi, F=F: getattr(F, name)(xi, 0.5, True), randomness=mode)(x))
        except RuntimeError as e:
            outs.append(e)
    ref, ours = outs
    call = f"vmap({name}(x, 0.5, True), randomness={mode!r}) x{tuple(x.shape)}"
    if mode == "error":
        assert isinstance(ref, RuntimeError) and isinstance(ours, RuntimeError), call
        return
    torch.testing.assert_close(ours, ref, msg=lambda m: f"{call}: {m}")
    assert torch.equal(ours[0], ours[1]) == (mode == "same"), call


def test_per_sample_gradients_match_torch() -> None:
    """The torch.func recipe: functional_call + vmap(grad(...)) over a small model."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()
    model.eval()  # per-sample batch norm uses the running statistics
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    x = torch.randn(6, 5, dtype=DT)
    y = torch.tensor([0, 2, 1, 1, 0, 2])
    results = []
    for F in (TF, RF):

        def loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor, F: ModuleType = F) -> Tensor:
            out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
            return F.cross_entropy(out, yi.unsqueeze(0), label_smoothing=0.1)

        results.append(vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y))
    ref, ours = results
    assert set(ours) == set(params)
    for k in params:
        assert ours[k].shape == (6, *params[k].shape)
        torch.testing.assert_close(ours[k], ref[k], msg=lambda m, k=k: f"per-sample grad {k}: {m}")


def test_plain_autograd_keeps_fast_paths() -> None:
    """Outside the transforms the lean cross-entropy and the pointwise Function still run."""
    x = X.clone().requires_grad_()
    assert type(RF.cross_entropy(x, IDX).grad_fn).__name__.startswith("CrossEntropyIndex")
    assert type(RF.mse_loss(x, T).grad_fn).__name__.startswith("_Pointwise")
    out: list[str] = []

    def f(x: Tensor) -> Tensor:
        y = RF.cross_entropy(x, IDX)
        out.append(type(y.grad_fn).__name__ if y.grad_fn is not None else "")
        return y

    grad(f)(X.clone())
    with forward_ad.dual_level():
        f(forward_ad.make_dual(X.clone(), torch.ones_like(X)))
    assert not any(n.startswith("CrossEntropyIndex") for n in out), out


def test_private_api_fallbacks_take_the_composite_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torch's private functorch / forward-AD hooks, the check answers "maybe
    transformed": every path is then the composite one, and still gives torch's values."""
    from reimpl.nn.functional import _common

    monkeypatch.setattr(_common, "_FUNCTORCH", None)
    assert _common._interpreter_stack() is None and _common.transformed() and _common.vmapped()
    x = X.clone().requires_grad_()
    assert not type(RF.cross_entropy(x, IDX).grad_fn).__name__.startswith("CrossEntropyIndex")
    for name, args in (("cross_entropy", (X, IDX)), ("mse_loss", (X, T))):
        for transform in ("grad", "vmap_grad", "dual"):
            row = Row(name, _loss(name), args)
            torch.testing.assert_close(
                _transform(transform, row, RF), _transform(transform, row, TF)
            )
    monkeypatch.undo()
    # only peek_interpreter_stack: still exact
    monkeypatch.setattr(_common, "_FUNCTORCH", SimpleNamespace(peek_interpreter_stack=lambda: None))
    assert _common._interpreter_stack() == [] and not _common.vmapped()
    monkeypatch.setattr(_common, "forward_ad", SimpleNamespace())  # no _current_level
    assert _common.transformed()
