"""SequentialLR and ChainedScheduler: schedulers made of schedulers."""

from __future__ import annotations

import inspect
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from torch.optim import Optimizer
from torch.optim import lr_scheduler as _torch

from reimpl.optim.lr_scheduler._base import (
    LRScheduler,
    _group_values,
    _set_group_value,
)
from reimpl.optim.lr_scheduler._plateau import ReduceLROnPlateau

# ----------------------------------------------------------------------------- composite


def _needs_metrics(s: object) -> bool:
    """ReduceLROnPlateau-like (ours, torch's, or any whose step requires an argument)."""
    if isinstance(s, ReduceLROnPlateau):
        return True
    step = getattr(s, "step", None)
    if step is None:
        return False
    try:
        params = inspect.signature(step).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        for p in params
    )


def _check_members(owner: str, optimizer: Optimizer, schedulers: Sequence[Any]) -> None:
    for i, s in enumerate(schedulers):
        if not hasattr(s, "optimizer"):
            raise TypeError(f"{owner}: the scheduler at index {i} has no `optimizer` attribute")
        if _needs_metrics(s):
            raise ValueError(
                f"{owner} cannot hold ReduceLROnPlateau (index {i}): its step() needs a metric"
            )
        if optimizer != s.optimizer:
            raise ValueError(
                f"{owner}: all schedulers must drive the same optimizer; the "
                f"{type(s).__name__} at index {i} drives another one"
            )


def _composite_state(sched: Any) -> dict[str, Any]:
    state = {k: v for k, v in sched.__dict__.items() if k not in ("optimizer", "_schedulers")}
    state["_schedulers"] = [s.state_dict() for s in sched._schedulers]
    return state


def _load_composite_state(sched: Any, state_dict: dict[str, Any]) -> None:
    members = state_dict.pop("_schedulers")
    sched.__dict__.update(state_dict)
    state_dict["_schedulers"] = members
    for s, st in zip(sched._schedulers, members, strict=False):
        s.load_state_dict(st)


class SequentialLR(LRScheduler, _torch.SequentialLR):
    """Run ``schedulers[i]`` between ``milestones[i−1]`` and ``milestones[i]``.

    At a milestone the next scheduler starts from its own epoch 0 (closed form, from the
    groups' ``initial_lr``).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        schedulers: list[LRScheduler],
        milestones: list[int],
        last_epoch: int = -1,
    ) -> None:
        if len(schedulers) < 1:
            raise ValueError("SequentialLR needs at least one scheduler")
        _check_members("SequentialLR", optimizer, schedulers)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                f"SequentialLR needs one milestone fewer than schedulers: got "
                f"{len(schedulers)} schedulers and {len(milestones)} milestones"
            )
        self._schedulers = schedulers  # type: ignore[assignment]
        self._milestones = milestones
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            _set_group_value(group, "lr", group["initial_lr"])
        # undo the initial step every member took when it was built, then redo the first's
        self.recursive_undo()
        first = self._schedulers[bisect_right(self._milestones, 0)]
        first._initial_step()
        self._last_lr = first.get_last_lr()

    def recursive_undo(self, sched: Any = None) -> None:
        """Decrement ``last_epoch`` of every (nested) member scheduler."""
        target = self if sched is None else sched
        if hasattr(target, "_schedulers"):
            for s in target._schedulers:
                self.recursive_undo(s)
        elif hasattr(target, "last_epoch"):
            target.last_epoch -= 1

    def step(self) -> None:  # type: ignore[override]
        self.last_epoch += 1
        i = bisect_right(self._milestones, self.last_epoch)
        current = self._schedulers[i]
        if i > 0 and self._milestones[i - 1] == self.last_epoch:
            current._update_lr(0)
        else:
            current.step()
        self._last_lr = current.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        return _composite_state(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _load_composite_state(self, state_dict)


class ChainedScheduler(LRScheduler, _torch.ChainedScheduler):
    """Step every scheduler in turn each step; chainable forms compose multiplicatively."""

    def __init__(
        self, schedulers: Sequence[LRScheduler], optimizer: Optimizer | None = None
    ) -> None:
        if len(schedulers) < 1:
            raise ValueError("ChainedScheduler needs at least one scheduler")
        optimizer = optimizer or schedulers[0].optimizer
        _check_members("ChainedScheduler", optimizer, schedulers)
        self._schedulers = schedulers
        self.optimizer = optimizer
        self._last_lr = _group_values(self._schedulers[-1].optimizer, "lr")

    def step(self) -> None:  # type: ignore[override]
        for s in self._schedulers:
            s.step()
        self._last_lr = _group_values(self._schedulers[-1].optimizer, "lr")

    def state_dict(self) -> dict[str, Any]:
        return _composite_state(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _load_composite_state(self, state_dict)
