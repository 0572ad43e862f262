"""The base every reimpl scheduler shares, and its helpers (see the package docstring)."""

from __future__ import annotations

import contextlib
import functools
import types
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler as _TorchLRSchedulerBase

Lr = Any  # float or a 0-d/1-element Tensor (tensor learning rates)

_EPOCH_DEPRECATED = (
    "Passing `epoch` to `scheduler.step()` is deprecated; call `scheduler.step()` once per "
    "epoch instead. While it lasts, an explicit epoch uses the scheduler's closed form "
    "(where it has one) rather than the chainable update."
)
_STEP_ORDER = (
    "`lr_scheduler.step()` was called before `optimizer.step()`: since PyTorch 1.1 call "
    "`optimizer.step()` first, otherwise the first value of the schedule is skipped."
)
_STEP_REPLACED = (
    "`optimizer.step` was replaced after the lr scheduler was created, so the scheduler "
    "cannot tell whether it ran; make sure to call `optimizer.step()` before "
    "`lr_scheduler.step()`."
)
_USE_GET_LAST_LR = "get_lr() is internal to step(); use `get_last_lr()` for the last computed lr."


# ----------------------------------------------------------------------------- helpers


def _check_optimizer(optimizer: object) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}")


def _per_group(name: str, optimizer: Optimizer, value: Any) -> list[Any]:
    """One value per param group: a list/tuple of the right length, or a broadcast scalar."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(optimizer.param_groups):
            raise ValueError(
                f"{name} needs one value per param group: got {len(value)} values for "
                f"{len(optimizer.param_groups)} param groups"
            )
        values = list(value)
    else:
        values = [value] * len(optimizer.param_groups)
    return [v.clone() if isinstance(v, Tensor) else v for v in values]


def _group_values(optimizer: Optimizer, key: str) -> list[Any]:
    """``group[key]`` of every group; tensors are cloned so later in-place fills don't leak."""
    return [
        g[key].clone() if isinstance(g[key], Tensor) else g[key] for g in optimizer.param_groups
    ]


def _set_group_value(group: dict[str, Any], key: str, value: Any) -> None:
    """Assign, or fill in place when the group holds a tensor (tensor lrs stay tensors)."""
    if isinstance(group[key], Tensor):
        if isinstance(value, Tensor) and value.dim() != 0:
            value = value.squeeze()
        group[key].fill_(value)
    else:
        group[key] = value


def _set_momentum(optimizer: Optimizer, values: Sequence[Any], use_beta1: bool) -> None:
    for group, m in zip(optimizer.param_groups, values, strict=True):
        if use_beta1:
            group["betas"] = (m, *group["betas"][1:])
        else:
            group["momentum"] = m


def _track_optimizer_steps(optimizer: Optimizer) -> None:
    """Wrap ``optimizer.step`` to record that it ran (``_opt_called``), for the order warning.

    The marker names are torch's, so torch's schedulers and ours share one wrapper.
    """
    if hasattr(optimizer.step, "_wrapped_by_lr_sched"):
        return
    unbound = optimizer.step.__func__  # type: ignore[attr-defined]
    owner = weakref.ref(optimizer)

    @functools.wraps(unbound)
    def step(*args: Any, **kwargs: Any) -> Any:
        opt = owner()
        opt._opt_called = True  # type: ignore[union-attr]
        return unbound(opt, *args, **kwargs)

    step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
    optimizer.step = step  # type: ignore[method-assign]


@contextlib.contextmanager
def _flag(obj: object, name: str) -> Iterator[None]:
    setattr(obj, name, True)
    try:
        yield
    finally:
        setattr(obj, name, False)


def _lambda_list(optimizer: Optimizer, lr_lambda: Any) -> list[Callable[[int], float]]:
    if isinstance(lr_lambda, (list, tuple)):
        if len(lr_lambda) != len(optimizer.param_groups):
            raise ValueError(
                f"lr_lambda needs one function per param group: got {len(lr_lambda)} for "
                f"{len(optimizer.param_groups)} param groups"
            )
        return list(lr_lambda)
    return [lr_lambda] * len(optimizer.param_groups)


def _callable_state(fn: Any) -> dict[str, Any] | None:
    """Plain functions/lambdas are not saved; callable objects save their ``__dict__``."""
    return None if isinstance(fn, types.FunctionType) else dict(fn.__dict__)


# ----------------------------------------------------------------------------- base


class LRScheduler(_TorchLRSchedulerBase):
    """Base class: tracks ``last_epoch``, ``base_lrs`` and writes lrs into the optimizer.

    Subclasses implement :meth:`get_lr` (chainable update) and optionally
    ``_get_closed_form_lr`` (used by ``step(epoch)``). Creating a scheduler performs the
    initial step (``last_epoch`` -1 → 0). ``last_epoch >= 0`` resumes a run and needs
    ``initial_lr`` in every param group.
    """

    _get_lr_called_within_step: bool = False
    _is_initial: bool = False

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                lr = group["lr"]
                group.setdefault("initial_lr", lr.clone() if isinstance(lr, Tensor) else lr)
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param_groups[{i}] has no 'initial_lr': resuming a scheduler with "
                        f"last_epoch={last_epoch} needs the optimizer state it was saved "
                        "with (load the optimizer's state_dict first), or use last_epoch=-1"
                    )
        self.base_lrs: list[Lr] = _group_values(optimizer, "initial_lr")
        self.last_epoch = last_epoch
        _track_optimizer_steps(optimizer)
        self._initial_step()

    def _initial_step(self) -> None:
        """Restart the step count and take the first step (lrs for epoch ``last_epoch+1``)."""
        self._step_count = 0
        with _flag(self, "_is_initial"):
            self.step()

    def state_dict(self) -> dict[str, Any]:
        """Everything but the optimizer (torch's format)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)

    def get_last_lr(self) -> list[Lr]:
        """The lrs of the last step, one per param group."""
        return self._last_lr

    def get_lr(self) -> list[Lr]:
        """The next lrs (chainable form). Called by :meth:`step`; use :meth:`get_last_lr`."""
        raise NotImplementedError(f"{type(self).__name__} does not compute lrs by itself")

    def _warn_outside_step(self) -> None:
        if not self._get_lr_called_within_step:
            warnings.warn(_USE_GET_LAST_LR, UserWarning, stacklevel=3)

    def _lrs(self) -> list[Lr]:
        return _group_values(self.optimizer, "lr")

    def _scaled(self, factor: Any) -> list[Lr]:
        return [g["lr"] * factor for g in self.optimizer.param_groups]

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        """Advance one epoch (or jump to ``epoch``, deprecated) and set the new lrs."""
        if self._step_count == 1:
            if not hasattr(self.optimizer.step, "_wrapped_by_lr_sched"):
                warnings.warn(_STEP_REPLACED, UserWarning, stacklevel=2)
            elif not getattr(self.optimizer, "_opt_called", False):
                warnings.warn(_STEP_ORDER, UserWarning, stacklevel=2)
        self._step_count += 1
        if epoch is not None:
            warnings.warn(_EPOCH_DEPRECATED, UserWarning, stacklevel=2)
        self._update_lr(epoch)

    def _update_lr(self, epoch: int | None = None) -> None:
        with _flag(self, "_get_lr_called_within_step"):
            if epoch is None:
                self.last_epoch += 1
                values = self.get_lr()
            else:
                self.last_epoch = epoch
                closed = getattr(self, "_get_closed_form_lr", None)
                values = closed() if closed is not None else self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values, strict=True):
            _set_group_value(group, "lr", lr)
        self._last_lr: list[Lr] = self._lrs()


_LRScheduler = LRScheduler
