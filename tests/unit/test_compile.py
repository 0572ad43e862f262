"""torch.compile(fullgraph=True) traces every loss with no graph break, forward and backward."""

from __future__ import annotations

import inspect

import pytest
import torch

import reimpl.nn.functional as F

g = torch.Generator().manual_seed(0)
X = torch.randn(6, 5, generator=g)
IDX = torch.randint(0, 5, (6,), generator=g)
Y = torch.randn(6, 5, generator=g)
U = torch.rand(6, 5, generator=g)

CALLS = {
    "cross_entropy": (F.cross_entropy, (IDX,), {"label_smoothing": 0.1, "weight": U[0]}),
    "cross_entropy_probs": (F.cross_entropy, (torch.softmax(Y, 1),), {}),
    "nll_loss": (F.nll_loss, (IDX,), {"ignore_index": 2}),
    "log_softmax": (F.log_softmax, (), {"dim": 1}),
    "binary_cross_entropy": (lambda x, t: F.binary_cross_entropy(torch.sigmoid(x), t), (U,), {}),
    "binary_cross_entropy_with_logits": (
        F.binary_cross_entropy_with_logits,
        (U,),
        {"pos_weight": U[1]},
    ),
    "mse_loss": (F.mse_loss, (Y,), {}),
    "l1_loss": (F.l1_loss, (Y,), {}),
    "smooth_l1_loss": (F.smooth_l1_loss, (Y,), {"beta": 0.5}),
    "huber_loss": (F.huber_loss, (Y,), {"delta": 0.5}),
    "kl_div": (F.kl_div, (U,), {"reduction": "batchmean"}),
    "poisson_nll_loss": (F.poisson_nll_loss, (U * 3,), {"full": True}),
    "gaussian_nll_loss": (F.gaussian_nll_loss, (Y, U + 0.1), {}),
    "margin_ranking_loss": (F.margin_ranking_loss, (Y, Y.sign()), {"margin": 0.2}),
    "hinge_embedding_loss": (F.hinge_embedding_loss, (Y.sign(),), {}),
    "soft_margin_loss": (F.soft_margin_loss, (Y.sign(),), {}),
    "multilabel_soft_margin_loss": (F.multilabel_soft_margin_loss, (U,), {"weight": U[0]}),
    "multilabel_margin_loss": (F.multilabel_margin_loss, (IDX.expand(5, 6).T - 1,), {}),
    "multi_margin_loss": (F.multi_margin_loss, (IDX,), {"p": 2, "weight": U[0]}),
    "cosine_embedding_loss": (F.cosine_embedding_loss, (Y, Y[:, 0].sign()), {}),
    "triplet_margin_loss": (F.triplet_margin_loss, (Y, U), {"swap": True}),
    "triplet_margin_with_distance_loss": (F.triplet_margin_with_distance_loss, (Y, U), {}),
    "pairwise_distance": (F.pairwise_distance, (Y,), {}),
    "cosine_similarity": (F.cosine_similarity, (Y,), {}),
}


def _reductions(name: str) -> list[str]:
    fn = CALLS[name][0]
    return ["default", "none"] if "reduction" in inspect.signature(fn).parameters else ["default"]


@pytest.mark.parametrize(
    ("name", "reduction"), [(n, r) for n in CALLS for r in _reductions(n)], ids=str
)
def test_losses_compile_fullgraph(name: str, reduction: str) -> None:
    """Values and gradients as eager, with the default reduction and per element ('none':
    torch 2.11's compile lost the gradient of a Function output made in place)."""
    fn, args, kw = CALLS[name]
    if reduction == "none":
        kw = {**kw, "reduction": "none"}
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, *a: fn(x, *a, **kw), fullgraph=True, backend="aot_eager")
    x1, x2 = X.clone().requires_grad_(), X.clone().requires_grad_()
    eager, traced = fn(x1, *args, **kw), compiled(x2, *args)
    torch.testing.assert_close(traced, eager)
    eager.sum().backward()
    traced.sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)
