"""SparseAdam: Adam (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015)
applied lazily, to the rows a sparse gradient touches.

An embedding table with a million rows sees a few hundred of them per batch. Plain Adam
decays both moments of *every* row at every step, so the cost of a step is the size of
the table, and rows that were not looked up still move (their first moment is not yet
zero). The lazy variant reads the gradient's sparsity as "no information about this row
at this step": only the rows listed in the sparse gradient have their moments decayed
and their parameters moved, and the rest of the table is left exactly as it was. The
cost of a step is then the number of rows touched. Every row shares one step counter per
parameter, so the bias correction is the one of the global step, not of the row's own
number of updates (as torch does).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from reimpl.optim._checks import check_betas
from reimpl.optim._common import TensorList
from reimpl.optim._fused import Forms
from reimpl.optim.optimizer import ParamsT, ReimplOptimizer

__all__ = ["SparseAdam"]


class SparseAdamTensors(NamedTuple):
    """The lists an update takes, one per role (the state keys). ``step`` holds the
    counters as torch keeps them for this optimizer: Python ints, already advanced."""

    param: TensorList
    grad: TensorList
    exp_avg: TensorList
    exp_avg_sq: TensorList
    step: list[Any]


class SparseAdamHP(NamedTuple):
    lr: float | Tensor
    beta1: float
    beta2: float
    eps: float
    maximize: bool = False  # a group from before torch had maximize lacks the key


#: how the constructor's messages name a hyperparameter
_LABELS = {"lr": "learning rate", "eps": "epsilon value"}


class SparseAdam(ReimplOptimizer, torch.optim.SparseAdam):
    r"""Adam for dense parameters with sparse gradients (``nn.Embedding(sparse=True)``).

    Let :math:`R_t` be the rows (indices) of parameter :math:`\theta` listed in its
    sparse gradient :math:`g_t` at step :math:`t`, duplicates summed first (negated first
    when ``maximize``); :math:`\gamma` is ``lr``. For :math:`r \in R_t` only:

    .. math::
        m_{t,r} &= m_{t-1,r} + (1 - \beta_1)\,(g_{t,r} - m_{t-1,r}) \\
        v_{t,r} &= v_{t-1,r} + (1 - \beta_2)\,(g_{t,r}^2 - v_{t-1,r})
            \quad (m_0 = v_0 = 0) \\
        \alpha_t &= \gamma\,\sqrt{1 - \beta_2^t} \,/\, (1 - \beta_1^t) \\
        \theta_{t,r} &= \theta_{t-1,r} - \alpha_t\, m_{t,r} / (\sqrt{v_{t,r}} + \epsilon)

    and :math:`m, v, \theta` keep their values on every row not in :math:`R_t`. The step
    counter :math:`t` counts the steps at which the param had a gradient at all (an empty
    gradient still counts one, and moves nothing). State keys: ``step`` (a Python int, as
    torch keeps it here), ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`).

    Only sparse gradients are accepted (a dense one is a ``RuntimeError``: use
    :class:`~reimpl.optim.Adam`), and only dense, real parameters (``ValueError``).

    Args: as :class:`torch.optim.SparseAdam` — ``lr`` (float or one-element Tensor),
    ``betas``, ``eps``, ``maximize``.
    """

    _Tensors = SparseAdamTensors
    _HP = SparseAdamHP
    _sparse_ok = True

    def _forms(self) -> Forms:
        # no multi-tensor form: torch._foreach_* ops take no sparse operands, and torch has
        # none either; the per-tensor loop stands in for both
        return Forms(_single_tensor_sparse_adam, _single_tensor_sparse_adam, None, "sparse_adam")

    def __init__(
        self, params: ParamsT, lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, maximize: bool = False,
    ) -> None:  # fmt: skip
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError(
                f"lr given as a Tensor must have exactly one element, got {lr.numel()}"
            )
        for name, value in (("lr", lr), ("eps", eps)):
            if not value > 0.0:  # strictly: SparseAdam refuses 0 where Adam allows it
                raise ValueError(f"Invalid {_LABELS[name]}: {value} (it must be > 0)")
        check_betas(betas)
        defaults = {"lr": lr, "betas": betas, "eps": eps, "maximize": maximize}
        # torch's base set-up alone: torch's SparseAdam has no foreach / differentiable /
        # fused, so its groups (and checkpoints) hold exactly these four keys
        Optimizer.__init__(self, params, defaults)  # type: ignore[arg-type]
        where: dict[str, list[list[int]]] = {"sparse": [], "complex": []}
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.is_sparse:
                    where["sparse"].append([gi, pi])
                if p.is_complex():
                    where["complex"].append([gi, pi])
        if where["sparse"]:
            raise ValueError(
                f"SparseAdam updates dense parameters (its gradients are the sparse ones); "
                f"the params at [group, index] {where['sparse']} are sparse tensors"
            )
        if where["complex"]:
            raise ValueError(
                f"SparseAdam takes real parameters only; the params at [group, index] "
                f"{where['complex']} are complex"
            )

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch's base alone: the checkpoint format is torch's SparseAdam's (int step
        # counters, four group keys), kept as it is rather than upgraded to tensor counters
        Optimizer.__setstate__(self, state)  # type: ignore[arg-type]

    def _new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {
            "step": 0,  # a Python int, as torch's SparseAdam keeps it
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
        }

    def _init_group(self, group: dict[str, Any], *lists: list[Any]) -> tuple[bool, bool]:
        """Collect the params with a gradient and their state, advancing each counter as
        it is collected (torch's order: a dense gradient met part-way through a group
        leaves the counters of the params before it advanced, and nothing updated)."""
        params, grads, exp_avgs, exp_avg_sqs, steps = lists
        for p in group["params"]:
            if p.grad is None:
                continue
            params.append(p)
            if not p.grad.is_sparse:
                raise RuntimeError(
                    "SparseAdam takes sparse gradients only (as nn.Embedding(sparse=True) "
                    "makes); for a dense gradient use Adam"
                )
            grads.append(p.grad)
            state = self.state[p]
            if not state:
                state.update(self._new_state(p, group))
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            state["step"] += 1
            steps.append(state["step"])
        return True, False

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every param with a gradient; ``closure`` re-evaluates the loss.

        Not the shared step: the counters here are Python ints held in the state (torch's
        checkpoint format for this optimizer), advanced while the group is collected, and
        there is a single path (no foreach, differentiable or fused to choose from)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        update = self._forms().single
        for group in self.param_groups:
            lists: list[list[Any]] = [[] for _ in self._Tensors._fields]
            self._init_group(group, *lists)
            update(self._Tensors(*lists), self._hparams(group))
        return loss


def _on_rows(grad: Tensor, values: Tensor) -> Tensor:
    """A sparse tensor with ``values`` on the rows of the coalesced ``grad``. Its indices
    are valid by construction, so no invariant check (and no warning that checks are off,
    which torch's own step does not give either)."""
    return torch.sparse_coo_tensor(grad._indices(), values, grad.size(), check_invariants=False)


def _single_tensor_sparse_adam(t: SparseAdamTensors, hp: SparseAdamHP) -> None:
    """Per-tensor loop over the rows each gradient lists (``t.step``: the advanced counts)."""
    beta1, beta2 = hp.beta1, hp.beta2
    for param, grad, m, v, n in zip(*t, strict=True):
        if hp.maximize:
            grad = -grad
        # duplicate rows must be summed first: the moments are not linear in the gradient
        grad = grad.coalesce()
        g = grad._values()
        if g.numel() == 0:  # no rows: nothing moves (the counter did)
            continue
        # m += (1 - beta1)(g - m) and v += (1 - beta2)(g^2 - v), on the listed rows only
        m_old = m.sparse_mask(grad)._values()
        dm = g.sub(m_old).mul_(1 - beta1)
        m.add_(_on_rows(grad, dm))
        v_old = v.sparse_mask(grad)._values()
        dv = g.pow(2).sub_(v_old).mul_(1 - beta2)
        v.add_(_on_rows(grad, dv))

        # the rows' new moments, from the pieces at hand (no second gather)
        m_rows = dm.add_(m_old)
        denom = dv.add_(v_old).sqrt_().add_(hp.eps)
        alpha = hp.lr * math.sqrt(1 - beta2**n) / (1 - beta1**n)
        param.add_(_on_rows(grad, -alpha * m_rows.div_(denom)))
