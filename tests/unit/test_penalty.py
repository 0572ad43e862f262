"""Norm penalties: values and gradients against the formulas, parameter selection, the
SGD weight-decay equivalence, and the module docstring's training loop."""

from __future__ import annotations

import copy
import re

import pytest
import torch

import reimpl.nn as RN
import reimpl.nn.functional as F
from reimpl.nn.functional import _penalty


def _params() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True),
        torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True),
    ]


@pytest.mark.parametrize("strength", [1.0, 0.5, 1e-3])
def test_values_and_gradients(strength: float) -> None:
    ps = _params()
    l1 = F.l1_penalty(ps, strength=strength)
    l2 = F.l2_penalty(ps, strength=strength)
    flat = torch.cat([p.detach().flatten() for p in ps])
    torch.testing.assert_close(l1, strength * flat.abs().sum())
    torch.testing.assert_close(l2, strength * (flat**2).sum())
    assert l1.dim() == 0 and l2.dim() == 0
    g1 = torch.autograd.grad(l1, ps)
    g2 = torch.autograd.grad(l2, ps)
    for p, a, b in zip(ps, g1, g2, strict=True):
        torch.testing.assert_close(a, strength * p.detach().sign())
        torch.testing.assert_close(b, 2 * strength * p.detach())


def test_single_tensor_empty_and_bad_input() -> None:
    w = torch.tensor([3.0, -4.0])
    assert float(F.l1_penalty(w)) == 7.0 and float(F.l2_penalty(w)) == 25.0
    assert float(F.l1_penalty([])) == 0.0 and float(F.l2_penalty(iter([]))) == 0.0
    with pytest.raises(TypeError, match="not a Tensor"):
        F.l2_penalty([w, 3.0])  # type: ignore[list-item]


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.conv = torch.nn.Conv2d(4, 6, 3)
        self.bn_ours = RN.BatchNorm2d(6)
        self.bn_torch = torch.nn.BatchNorm1d(6)
        self.inorm = torch.nn.InstanceNorm1d(6, affine=True)
        self.ln = torch.nn.LayerNorm((2, 3))  # 2-D weight: left out as a norm layer
        self.gn = torch.nn.GroupNorm(2, 6)
        self.lin = torch.nn.Linear(6, 2)
        self.tied = torch.nn.Linear(4, 10, bias=False)
        self.tied.weight = self.emb.weight  # shared: listed once
        self.prelu = torch.nn.PReLU(6)
        self.rnn = torch.nn.GRU(2, 3)


def test_decay_parameter_selection() -> None:
    net = _Net()
    decay = F.decay_parameters(net)
    rest = F.no_decay_parameters(net)
    names = {id(p): n for n, p in net.named_parameters()}
    assert [names[id(p)] for p in decay] == [
        "emb.weight",
        "conv.weight",
        "lin.weight",
        "rnn.weight_ih_l0",
        "rnn.weight_hh_l0",
    ]
    assert sorted(names[id(p)] for p in rest) == sorted(
        n for n in names.values() if n not in {names[id(p)] for p in decay}
    )
    assert len(decay) + len(rest) == len(list(net.parameters()))
    for m in (net.bn_ours, net.bn_torch, net.inorm, net.ln, net.gn, RN.BatchNorm3d(2)):
        assert _penalty._is_norm_layer(m), type(m).__name__
    for m in (net.lin, net.conv, net.emb, RN.Dropout()):
        assert not _penalty._is_norm_layer(m), type(m).__name__
    groups = F.param_groups(net, 1e-4)
    assert groups[0]["weight_decay"] == 1e-4 and groups[1]["weight_decay"] == 0.0
    torch.optim.SGD(groups, lr=0.1)  # usable as given


@pytest.mark.parametrize("lam", [1e-2, 0.3])
def test_l2_penalty_equals_sgd_weight_decay(lam: float) -> None:
    """Plain SGD: loss + (λ/2)·Σw² follows the same trajectory as weight_decay=λ."""
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    base = base.double()
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, weight_decay=lam)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        x = torch.randn(16, 5, generator=g, dtype=torch.float64)
        y = torch.randn(16, 1, generator=g, dtype=torch.float64)
        opt_a.zero_grad()
        torch.nn.functional.mse_loss(a(x), y).backward()
        opt_a.step()
        opt_b.zero_grad()
        loss = torch.nn.functional.mse_loss(b(x), y) + lam / 2 * F.l2_penalty(b.parameters())
        loss.backward()
        opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-12)
    # and it is not a no-op: without decay the weights differ
    c = copy.deepcopy(base)
    assert not torch.allclose(next(c.parameters()), next(a.parameters()))


def test_docstring_example_runs() -> None:
    doc = _penalty.__doc__ or ""
    code = doc[doc.index("Example::") + len("Example::") :]
    code = "\n".join(line[4:] for line in code.splitlines())
    code = re.sub(r"\n\s*\Z", "\n", code)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 10, generator=g), torch.randn(8, 1, generator=g)) for _ in range(3)]
    scope: dict[str, object] = {"batches": batches}
    exec(compile(code, "<penalty docstring>", "exec"), scope)
    assert float(scope["loss"].detach()) > 0  # type: ignore[attr-defined]
