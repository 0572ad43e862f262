"""Muon: MomentUm Orthogonalized by Newton-Schulz (Jordan et al. 2024, "Muon: An optimizer
for hidden layers in neural networks", blog post, https://kellerjordan.github.io/posts/muon/).

The update SGD-momentum gives a weight matrix of a hidden layer is, in practice, nearly
low-rank: a few directions dominate it and the rest barely move. Muon replaces that update
by the nearest semi-orthogonal matrix (``U V^T`` for the momentum's ``U S V^T``), so every
direction of the matrix moves by the same amount, which trains hidden layers faster per
step. The orthogonalisation is not an SVD but a few steps of a Newton-Schulz iteration
(Bernstein & Newhouse 2024, "Old Optimizer, New Norm: An Anthology"): after scaling the
matrix to spectral norm at most one, each step applies the odd matrix polynomial
``a X + b (X X^T) X + c (X X^T)^2 X``, which maps each singular value s to
``a s + b s^3 + c s^5``; with the coefficients tuned for a steep slope at zero, five steps
bring every singular value near one (roughly into [0.7, 1.2], not exactly one, which does
not hurt). It runs in bfloat16: matrix products are what accelerators do fastest, and the
iteration tolerates the rounding. Only 2-D params (matrices) are Muon's; biases, gains and
embeddings belong to another optimizer (AdamW).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from reimpl.optim._checks import check_hparams
from reimpl.optim._common import TensorList
from reimpl.optim._fused import Forms
from reimpl.optim.optimizer import Optimizer, ParamsT, ReimplOptimizer

__all__ = ["Muon"]

#: the quintic's coefficients (a, b, c) and step count of Jordan et al.'s reference code
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
#: the smallest norm the matrix is divided by before the iteration
EPS = 1e-7
#: the learning-rate adjustments by matrix shape a group may name (None: "original")
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")
#: the iteration count above which the orthogonalisation refuses to run
_MAX_NS_STEPS = 100


class MuonTensors(NamedTuple):
    """The tensor lists an update takes, one per role (the state key). No step counter:
    the rule does not depend on the step number."""

    param: TensorList
    grad: TensorList
    momentum_buffer: TensorList


class MuonHP(NamedTuple):
    lr: float | Tensor
    weight_decay: float
    momentum: float
    nesterov: bool
    ns_coefficients: tuple[float, float, float]
    eps: float
    ns_steps: int
    adjust_lr_fn: str | None


class Muon(ReimplOptimizer, torch.optim.Muon):
    r"""Muon: SGD-momentum whose update matrix is orthogonalised before it is applied.

    For each 2-D parameter :math:`\theta \in \mathbb{R}^{A \times B}` with gradient
    :math:`g_t`, learning rate :math:`\gamma`, weight decay :math:`\lambda`, momentum
    :math:`\mu`:

    .. math::
        B_t &= \mu B_{t-1} + (1 - \mu)\, g_t
            \quad\text{(momentum buffer, } B_0 = 0\text{)} \\
        M_t &= \begin{cases} \mu B_t + (1 - \mu)\, g_t & \text{nesterov} \\
            B_t & \text{otherwise} \end{cases} \\
        X_0 &= \mathrm{bf16}(M_t) / \max(\lVert M_t \rVert_F, \epsilon)
            \quad\text{(transposed first when } A > B\text{)} \\
        X_{k+1} &= a X_k + (b\, X_k X_k^\top + c\, (X_k X_k^\top)^2)\, X_k,
            \quad k < K \text{ (ns\_steps)} \\
        \theta_t &= (1 - \gamma \lambda)\, \theta_{t-1} - \gamma\, s(A, B)\, O_t,
            \quad O_t = X_K \text{ (transposed back)}

    with the shape factor :math:`s(A, B) = \sqrt{\max(1, A / B)}` (``adjust_lr_fn`` None
    or ``"original"``, Jordan et al.) or :math:`0.2 \sqrt{\max(A, B)}`
    (``"match_rms_adamw"``: the update's RMS that of AdamW's, Liu et al. 2025, "Muon is
    Scalable for LLM Training"). :math:`O_t` is bfloat16, whatever the params' dtype.
    State key: ``momentum_buffer`` (:math:`B`).

    Args: as :class:`torch.optim.Muon` -- ``lr`` (float or one-element Tensor),
    ``weight_decay``, ``momentum``, ``nesterov``, ``ns_coefficients`` :math:`(a, b, c)`,
    ``eps``, ``ns_steps``, ``adjust_lr_fn``. Only 2-D params (``ValueError``), real and
    with dense gradients (``RuntimeError`` at the step). As torch's, one path: no
    ``foreach`` (the iteration is matrix products per param, not an elementwise pass),
    no ``fused``, ``maximize``, ``capturable`` or ``differentiable``.
    """

    _Tensors = MuonTensors
    _HP = MuonHP

    def _forms(self) -> Forms:
        # one form: nothing elementwise to batch across params, and torch has no other
        return Forms(_single_tensor_muon, _single_tensor_muon, None, "muon", scalars=())

    def __init__(
        self, params: ParamsT, lr: float | Tensor = 1e-3, weight_decay: float = 0.1,
        momentum: float = 0.95, nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS, eps: float = EPS,
        ns_steps: int = NS_STEPS, adjust_lr_fn: str | None = None,
    ) -> None:  # fmt: skip
        check_hparams(lr=lr, momentum=momentum, weight_decay=weight_decay)
        if adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(
                f"Unknown adjust_lr_fn {adjust_lr_fn!r}: use None, 'original' or 'match_rms_adamw'"
            )
        defaults = {
            "lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov,
            "ns_coefficients": ns_coefficients, "eps": eps, "ns_steps": ns_steps,
            "adjust_lr_fn": adjust_lr_fn,
        }  # fmt: skip
        self._setup(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        f"Muon updates 2-D params (matrices) only; got one of shape "
                        f"{tuple(p.shape)}: give biases, gains and embeddings to another "
                        "optimizer such as AdamW"
                    )

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch's base alone: torch's Muon groups have no foreach / maximize keys to add
        Optimizer.__setstate__(self, state)  # type: ignore[arg-type]

    def _path(self, group: dict[str, Any], params: TensorList) -> str:
        return "single"

    def _init_group(  # type: ignore[override]  # returns the base's (sparse, complex) pair
        self, group: dict[str, Any], *lists: list[Any]
    ) -> tuple[bool, bool]:
        """Collect the params with a gradient and their momentum buffers, starting a buffer
        (zeros like the gradient) for a param that has none -- also one a checkpoint lacks."""
        params, grads, buffers = lists
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if torch.is_complex(p):
                raise RuntimeError("Muon orthogonalises real matrices; a param is complex")
            if grad.is_sparse:
                raise RuntimeError("Muon needs dense gradients; a param has a sparse one")
            params.append(p)
            grads.append(grad)
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(
                    grad, memory_format=torch.preserve_format
                )
            buffers.append(state["momentum_buffer"])
        return False, False


def _single_tensor_muon(t: MuonTensors, hp: MuonHP) -> None:
    """Per-tensor loop: momentum, orthogonalised update, decoupled decay, then the step."""
    lr, mu = hp.lr, hp.momentum
    for param, grad, buf in zip(*t, strict=True):
        if grad.ndim != 2:  # a param added later through add_param_group is not checked
            raise ValueError(f"Muon updates matrices; got a gradient of shape {tuple(grad.shape)}")
        buf.lerp_(grad, 1 - mu)
        m = grad.lerp(buf, mu) if hp.nesterov else buf
        o = newton_schulz(m, hp.ns_coefficients, hp.ns_steps, hp.eps)
        step_size = lr * _shape_factor(hp.adjust_lr_fn, param.shape)
        param.mul_(1 - lr * hp.weight_decay)
        # a Tensor lr gives a 0-dim step size, which the op reads as a number (as torch's)
        param.add_(o, alpha=-step_size)  # type: ignore[arg-type]


def newton_schulz(
    m: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float
) -> Tensor:
    """``steps`` iterations of ``X <- a X + (b X X^T + c (X X^T)^2) X`` on ``m`` in
    bfloat16, scaled to Frobenius norm (hence spectral norm) at most one first, on the wide
    orientation (the Gram matrix ``X X^T`` is the smaller square). The result has ``m``'s
    shape and singular values near one.

    A bfloat16 ``m`` is worked on in place (its scaling writes into it), as torch's does:
    for bfloat16 params without nesterov, that is the momentum buffer itself."""
    if steps >= _MAX_NS_STEPS:
        raise ValueError(
            f"ns_steps={steps}: Newton-Schulz needs a handful of iterations (5 by default); "
            f"{_MAX_NS_STEPS} or more are refused"
        )
    if m.ndim != 2:
        raise ValueError(f"Newton-Schulz orthogonalises matrices; got shape {tuple(m.shape)}")
    if len(coefficients) != 3:
        raise ValueError(
            f"ns_coefficients must be three numbers (a, b, c); got {len(coefficients)}"
        )
    a, b, c = coefficients
    tall = m.size(0) > m.size(1)
    x = m.bfloat16()
    if tall:
        x = x.T
    x.div_(x.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        x = torch.addmm(x, poly, x, beta=a)  # a X + (b G + c G^2) X
    return x.T if tall else x


def _shape_factor(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """How much an A x B matrix's step is scaled: sqrt(max(1, A / B)) (None, "original")
    or 0.2 sqrt(max(A, B)) ("match_rms_adamw"); 1 for a name a group set after the
    constructor's check (torch does the same)."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        if cols == 0:
            raise ZeroDivisionError(
                f"adjust_lr_fn='original' scales the step by sqrt(max(1, rows / cols)), "
                f"undefined for a matrix with no columns (shape {tuple(shape)})"
            )
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0
