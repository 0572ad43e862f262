"""Double backward of the custom Functions whose create_graph path differentiates a
composite form, with inputs that are not independent (a bias computed from the weight, as
weight tying or a parametrization makes): the gradients must be torch's, each path
counted once. (Before the fix, the composite's gradient for the weight already included
the path through the bias, and the engine added it again.)"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as TF

import reimpl.nn.functional as F

_NORMS: dict[str, tuple[Callable[..., torch.Tensor], tuple[int, ...]]] = {
    "layer_norm": (lambda m, x, w, b: m.layer_norm(x, [6], w, b), (3, 6)),
    "group_norm": (lambda m, x, w, b: m.group_norm(x, 2, w, b), (3, 6, 6)),
    "instance_norm": (lambda m, x, w, b: m.instance_norm(x, None, None, w, b), (3, 6, 6)),
}


def _linear_ce(m: object, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    t = torch.tensor([0, 2, 1])
    if m is F:
        return F.linear_cross_entropy(x, w, t, linear_bias=b)
    return TF.cross_entropy(x @ w.t() + b, t)


@pytest.mark.parametrize("name", ["layer_norm", "group_norm", "instance_norm", "linear_ce"])
def test_bias_computed_from_the_weight(name: str) -> None:
    g = torch.Generator().manual_seed(3)
    if name == "linear_ce":
        call: Callable[..., torch.Tensor] = _linear_ce
        x0, w0 = torch.randn(3, 6, generator=g), torch.randn(4, 6, generator=g)
    else:
        call, shape = _NORMS[name]
        x0, w0 = torch.randn(*shape, generator=g), torch.rand(6, generator=g) + 0.5
    results = []
    for mod in (F, TF):
        x = x0.double().requires_grad_()
        w = w0.double().requires_grad_()
        b = w.sum(-1) * 0.3 if w.dim() > 1 else w * 0.3 - 1  # the bias is made from w
        out = call(mod, x, w, b)
        up = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)
        first = torch.autograd.grad(out, (x, w), up, create_graph=True)
        total = sum(((f * f).sum() for f in first), torch.zeros((), dtype=torch.float64))
        second = torch.autograd.grad(total, (x, w))
        results.append((first, second))
    torch.testing.assert_close(results[0], results[1], msg=lambda m: f"{name}: {m}")
