"""Weight averaging (SWA and EMA of a model's weights), mirroring ``torch.optim.swa_utils``.

:class:`AveragedModel` keeps a copy of a model whose parameters (and, with
``use_buffers=True``, buffers) are a running average of the model's over calls to
:meth:`AveragedModel.update_parameters`. The first call copies; call ``n ≥ 1`` (with ``n``
stored in the ``n_averaged`` buffer) applies an averaging rule:

* SWA (default): ``W ← W + (w − W) / (n + 1)``, the equal-weight mean of all snapshots;
* EMA: ``W ← decay · W + (1 − decay) · w`` — the exponential weighted average of
  :func:`reimpl.optim.exponential_weighted_average` with ``β = decay``, seeded by the
  first snapshot.

:class:`SWALR` anneals each group's lr to a constant ``swa_lr``; :func:`update_bn`
recomputes BatchNorm running statistics for the averaged weights.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from copy import deepcopy
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer
from torch.optim import swa_utils as _torch_swa

from reimpl.optim.lr_scheduler import LRScheduler, _per_group

__all__ = [
    "SWALR",
    "AveragedModel",
    "get_ema_avg_fn",
    "get_ema_multi_avg_fn",
    "get_swa_avg_fn",
    "get_swa_multi_avg_fn",
    "update_bn",
]

ParamList = list[Tensor] | tuple[Tensor, ...]
AvgFn = Callable[[Tensor, Tensor, Any], Tensor]
MultiAvgFn = Callable[[ParamList, ParamList, Any], None]

#: device types on which the default SWA rule runs as one foreach lerp (as torch does);
#: elsewhere it runs tensor by tensor (the two round differently in the last bit)
_FOREACH_DEVICE_TYPES = ("cuda", "xpu")


def _check_decay(decay: float) -> None:
    if decay < 0.0 or decay > 1.0:
        raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")


def _is_float(t: Tensor) -> bool:
    return torch.is_floating_point(t) or torch.is_complex(t)


def get_ema_multi_avg_fn(decay: float = 0.999) -> MultiAvgFn:
    """EMA over lists of tensors, in place: ``W ← lerp(W, w, 1 − decay)`` (foreach)."""
    _check_decay(decay)

    @torch.no_grad()
    def ema_update(averaged: ParamList, current: ParamList, num_averaged: Any) -> None:
        if _is_float(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 - decay)
        else:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(a * decay + c * (1 - decay))

    return ema_update


def get_swa_multi_avg_fn() -> MultiAvgFn:
    """Equal-weight mean over lists of tensors, in place: ``W ← lerp(W, w, 1 / (n + 1))``."""

    @torch.no_grad()
    def swa_update(averaged: ParamList, current: ParamList, num_averaged: Tensor | int) -> None:
        if _is_float(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 / (num_averaged + 1))  # type: ignore[arg-type]
            return
        diffs = torch._foreach_sub(current, averaged)
        if isinstance(num_averaged, Tensor):
            torch._foreach_addcdiv_(averaged, diffs, [num_averaged + 1] * len(averaged))  # type: ignore[arg-type]
        else:
            torch._foreach_add_(averaged, diffs, alpha=1.0 / (num_averaged + 1))

    return swa_update


def get_ema_avg_fn(decay: float = 0.999) -> AvgFn:
    """EMA of one tensor: returns ``decay · W + (1 − decay) · w``."""
    _check_decay(decay)

    @torch.no_grad()
    def ema_update(averaged: Tensor, current: Tensor, num_averaged: Any) -> Tensor:
        return decay * averaged + (1 - decay) * current

    return ema_update


def get_swa_avg_fn() -> AvgFn:
    """Equal-weight mean of one tensor: returns ``W + (w − W) / (n + 1)``."""

    @torch.no_grad()
    def swa_update(averaged: Tensor, current: Tensor, num_averaged: Tensor | int) -> Tensor:
        return averaged + (current - averaged) / (num_averaged + 1)

    return swa_update


def _group_by_device_and_dtype(
    averaged: list[Tensor], current: list[Tensor]
) -> dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]]:
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
    for a, c in zip(averaged, current, strict=True):
        mine, theirs = groups.setdefault((a.device, a.dtype), ([], []))
        mine.append(a)
        theirs.append(c)
    return groups


class AveragedModel(_torch_swa.AveragedModel):
    """A deep copy of ``model`` whose weights average the model's over updates.

    Args:
        model: the model to average.
        device: where to keep the average (default: where ``model`` is).
        avg_fn: ``avg_fn(W, w, n) -> new W`` per tensor.
        multi_avg_fn: ``multi_avg_fn(Ws, ws, n)`` updating lists in place (foreach).
            Neither given: SWA (equal-weight mean). Both: an error.
        use_buffers: average buffers too (e.g. BatchNorm running stats); otherwise buffers
            are copied from ``model`` at each update.
    """

    n_averaged: Tensor

    def __init__(
        self,
        model: Module,
        device: int | torch.device | None = None,
        avg_fn: AvgFn | None = None,
        multi_avg_fn: MultiAvgFn | None = None,
        use_buffers: bool = False,
    ) -> None:
        Module.__init__(self)  # (torch's AveragedModel.__init__ would set it all up itself)
        if avg_fn is not None and multi_avg_fn is not None:
            raise AssertionError("give AveragedModel either avg_fn or multi_avg_fn, not both")
        self.module = deepcopy(model)
        if device is not None:
            self.module = self.module.to(device)
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long, device=device))
        self.avg_fn = avg_fn
        self.multi_avg_fn = multi_avg_fn
        self.use_buffers = use_buffers

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def _tensors(self, model: Module) -> Iterable[Tensor]:
        if self.use_buffers:
            return itertools.chain(model.parameters(), model.buffers())
        return model.parameters()

    def update_parameters(self, model: Module) -> None:
        """Fold ``model``'s current weights into the average (the first call copies)."""
        averaged: list[Tensor] = []
        current: list[Tensor] = []
        first = bool(self.n_averaged == 0)
        for a, c in zip(self._tensors(self.module), self._tensors(model), strict=False):
            a = a.detach()
            c = c.detach().to(a.device)
            averaged.append(a)
            current.append(c)
            if first:
                a.copy_(c)
        if not first:
            self._average(averaged, current)
        if not self.use_buffers:
            for b_avg, b_model in zip(self.module.buffers(), model.buffers(), strict=True):
                b_avg.detach().copy_(b_model.detach().to(b_avg.device))
        self.n_averaged += 1

    @torch.no_grad()
    def _average(self, averaged: list[Tensor], current: list[Tensor]) -> None:
        if self.avg_fn is not None and self.multi_avg_fn is None:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(self.avg_fn(a, c, self.n_averaged.to(a.device)))
            return
        for (device, _), (mine, theirs) in _group_by_device_and_dtype(averaged, current).items():
            n = self.n_averaged.to(device)
            if self.multi_avg_fn is not None:
                self.multi_avg_fn(mine, theirs, n)
            elif device.type in _FOREACH_DEVICE_TYPES:
                get_swa_multi_avg_fn()(mine, theirs, n)
            else:
                swa = get_swa_avg_fn()
                for a, c in zip(mine, theirs, strict=True):
                    a.copy_(swa(a, c, n))


def _is_batch_norm(module: Module) -> bool:
    """BatchNorm1d/2d/3d, SyncBatchNorm, lazy ones (and any class deriving a ``_BatchNorm``).

    Decided by class ancestry name rather than by having running stats, so that e.g.
    InstanceNorm with ``track_running_stats`` is left alone, as torch's ``update_bn`` does.
    """
    return any(cls.__name__ == "_BatchNorm" for cls in type(module).__mro__)


@torch.no_grad()
def update_bn(
    loader: Iterable[Any], model: Module, device: int | torch.device | None = None
) -> None:
    """Recompute BatchNorm running statistics with one pass over ``loader``.

    Running stats are reset and accumulated as a cumulative average (momentum ``None``);
    batches that are lists/tuples contribute their first element. The model's momentum
    values and training mode are restored afterwards.
    """
    momenta: dict[Module, Any] = {}
    for module in model.modules():
        if _is_batch_norm(module):
            module.reset_running_stats()  # type: ignore[operator]
            momenta[module] = module.momentum
    if not momenta:
        return
    was_training = model.training
    model.train()
    for module in momenta:
        module.momentum = None  # type: ignore[assignment]  # None: cumulative average
    for batch in loader:
        if isinstance(batch, (list, tuple)):
            batch = batch[0]
        if device is not None:
            batch = batch.to(device)
        model(batch)
    for module, momentum in momenta.items():
        module.momentum = momentum
    model.train(was_training)


def _anneal_cos(t: float) -> float:
    return (1 - math.cos(math.pi * t)) / 2


def _anneal_linear(t: float) -> float:
    return t


class SWALR(LRScheduler, _torch_swa.SWALR):
    """Anneal each group's lr to ``swa_lr`` over ``anneal_epochs`` steps, then hold it.

    With ``α(s) = a(min(1, s / anneal_epochs))`` (``a`` the cos or linear ramp 0 → 1) and
    ``s`` the step count, ``η_s = α(s) · swa_lr + (1 − α(s)) · η_start``, where ``η_start``
    (the lr when annealing began) is recovered from the current lr each step.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        swa_lr: float,
        anneal_epochs: int = 10,
        anneal_strategy: Literal["cos", "linear"] = "cos",
        last_epoch: int = -1,
    ) -> None:
        swa_lrs = _per_group("swa_lr", optimizer, swa_lr)
        for lr, group in zip(swa_lrs, optimizer.param_groups, strict=True):
            group["swa_lr"] = lr
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self._set_anneal_func(anneal_strategy)
        if not isinstance(anneal_epochs, int) or anneal_epochs < 0:
            raise ValueError(f"anneal_epochs must be an int >= 0, got {anneal_epochs!r}")
        self.anneal_epochs = anneal_epochs
        super().__init__(optimizer, last_epoch)

    # torch's names for the two ramps (ours)
    _cosine_anneal = staticmethod(_anneal_cos)
    _linear_anneal = staticmethod(_anneal_linear)

    def _set_anneal_func(self, strategy: str) -> None:
        self._anneal_strategy = strategy  # type: ignore[assignment]
        self.anneal_func = _anneal_cos if strategy == "cos" else _anneal_linear

    @staticmethod
    def _get_initial_lr(lr: Any, swa_lr: Any, alpha: float) -> Any:
        """Invert ``lr = α · swa_lr + (1 − α) · start`` for ``start``."""
        if alpha == 1:
            return swa_lr
        return (lr - alpha * swa_lr) / (1 - alpha)

    def _alpha(self, step: int) -> float:
        return self.anneal_func(max(0, min(1, step / max(1, self.anneal_epochs))))

    def get_lr(self) -> list[Any]:
        self._warn_outside_step()
        step = self._step_count - 1
        if self.anneal_epochs == 0:
            step = max(1, step)
        prev_alpha = self._alpha(step - 1)
        alpha = self._alpha(step)
        groups = self.optimizer.param_groups
        return [
            g["swa_lr"] * alpha
            + self._get_initial_lr(g["lr"], g["swa_lr"], prev_alpha) * (1 - alpha)
            for g in groups
        ]

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "anneal_func")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)
        self._set_anneal_func(self._anneal_strategy)
