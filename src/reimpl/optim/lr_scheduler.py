"""Learning-rate schedulers, mirroring ``torch.optim.lr_scheduler``.

Every scheduler here is a subclass of torch's ``LRScheduler`` *only* so that
``isinstance(s, torch.optim.lr_scheduler.LRScheduler)`` holds (Lightning, HF and torch's
own ``SequentialLR`` check it); all behaviour is defined in this module. The attribute
names are torch's, because a scheduler's ``state_dict()`` is its ``__dict__`` minus the
optimizer: keeping the names keeps checkpoints interchangeable both ways.

Notation in the docstrings: ``η_t`` is a group's lr after ``t`` steps, ``η_0`` its
``initial_lr`` (``base_lrs``), ``t`` is ``last_epoch``.

Two forms. ``step()`` updates the lr *chainably*: from the lr currently in the group, so
several schedulers can act on one optimizer and compose multiplicatively. ``step(epoch)``
(deprecated, warns) jumps to ``epoch`` and uses the *closed form* ``η_t = f(η_0, t)``
where the scheduler has one.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import types
import warnings
import weakref
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, SupportsFloat

from torch import Tensor
from torch.optim import Optimizer
from torch.optim import lr_scheduler as _torch
from torch.optim.lr_scheduler import LRScheduler as _TorchLRSchedulerBase

__all__ = [
    "ChainedScheduler",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "ExponentialLR",
    "LRScheduler",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "MultiplicativeLR",
    "OneCycleLR",
    "PolynomialLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "StepLR",
]

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


# ----------------------------------------------------------------------------- simple


class _LambdaScheduler(LRScheduler):
    """Shared by LambdaLR and MultiplicativeLR: per-group functions and their state."""

    def __init__(
        self,
        optimizer: Optimizer,
        lr_lambda: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        self.optimizer = optimizer
        self.lr_lambdas = _lambda_list(optimizer, lr_lambda)
        self._check_lambdas()
        super().__init__(optimizer, last_epoch)

    def _check_lambdas(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        state["lr_lambdas"] = [_callable_state(fn) for fn in self.lr_lambdas]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.pop("lr_lambdas")
        self.__dict__.update(state_dict)
        state_dict["lr_lambdas"] = saved
        for fn, attrs in zip(self.lr_lambdas, saved, strict=False):
            if attrs is not None:
                fn.__dict__.update(attrs)


class LambdaLR(_LambdaScheduler, _torch.LambdaLR):
    """``η_t = η_0 · λ(t)``, one ``λ`` per group or one for all."""

    def get_lr(self) -> list[Lr]:
        self._warn_outside_step()
        return [
            base * lam(self.last_epoch)
            for lam, base in zip(self.lr_lambdas, self.base_lrs, strict=True)
        ]


class MultiplicativeLR(_LambdaScheduler, _torch.MultiplicativeLR):
    """``η_t = η_{t−1} · λ(t)`` for ``t ≥ 1`` (no closed form)."""

    def _check_lambdas(self) -> None:
        for fn in self.lr_lambdas:
            if not callable(fn):
                raise TypeError(f"lr_lambda must be callable, got {type(fn).__name__}")

    def get_lr(self) -> list[Lr]:
        self._warn_outside_step()
        if self._is_initial:
            return self._lrs()
        return [
            g["lr"] * lam(self.last_epoch)
            for lam, g in zip(self.lr_lambdas, self.optimizer.param_groups, strict=True)
        ]


class StepLR(LRScheduler, _torch.StepLR):
    """``η_t = η_0 · γ^⌊t / step_size⌋``."""

    def __init__(
        self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Lr]:
        self._warn_outside_step()
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._lrs()
        return self._scaled(self.gamma)

    def _get_closed_form_lr(self) -> list[Lr]:
        return [b * self.gamma ** (self.last_epoch // self.step_size) for b in self.base_lrs]


class MultiStepLR(LRScheduler, _torch.MultiStepLR):
    """``η_t = η_0 · γ^(number of milestones ≤ t)``; a repeated milestone counts repeatedly."""

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Iterable[int],
        gamma: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        self.milestones = Counter(milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Lr]:
        self._warn_outside_step()
        if self.last_epoch not in self.milestones:
            return self._lrs()
        return self._scaled(self.gamma ** self.milestones[self.last_epoch])

    def _get_closed_form_lr(self) -> list[Lr]:
        passed = bisect_right(sorted(self.milestones.elements()), self.last_epoch)
        return [b * self.gamma**passed for b in self.base_lrs]


class ConstantLR(LRScheduler, _torch.ConstantLR):
    """``η_t = η_0 · factor`` for ``t < total_iters``, then ``η_0``."""

    def __init__(
        self,
        optimizer: Optimizer,
        factor: float = 1.0 / 3,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        if factor > 1.0 or factor < 0:
            raise ValueError(f"ConstantLR factor must lie in [0, 1], got {factor}")
        self.factor = factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Lr]:
        self._warn_outside_step()
        if self.last_epoch == 0:
            return self._scaled(self.factor)
        if self.last_epoch != self.total_iters:
            return self._lrs()
        return self._scaled(1.0 / self.factor)

    def _get_closed_form_lr(self) -> list[Lr]:
        done = self.last_epoch >= self.total_iters
        return [b * (self.factor + done * (1 - self.factor)) for b in self.base_lrs]


class LinearLR(LRScheduler, _torch.LinearLR):
    """``η_t = η_0 · (s + (e − s) · min(t, T) / T)``: factor ``s`` → ``e`` over ``T`` steps."""

    def __init__(
        self,
        optimizer: Optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError(f"LinearLR start_factor must lie in (0, 1], got {start_factor}")
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError(f"LinearLR end_factor must lie in [0, 1], got {end_factor}")
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Lr]:
        self._warn_outside_step()
        s, e, n = self.start_factor, self.end_factor, self.total_iters
        if self.last_epoch == 0:
            return self._scaled(s)
        if self._is_initial or self.last_epoch > n:
            return self._lrs()
        # ratio of consecutive factors: f(t) / f(t−1)
        return self._scaled(1.0 + (e - s) / (n * s + (self.last_epoch - 1) * (e - s)))

    def _get_closed_form_lr(self) -> list[Lr]:
        s, e, n = self.start_factor, self.end_factor, self.total_iters
        return [b * (s + (e - s) * min(n, self.last_epoch) / n) for b in self.base_lrs]


class ExponentialLR(LRScheduler, _torch.ExponentialLR):
    """``η_t = η_0 · γ^t``."""

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Lr]:
        self._warn_outside_step()
        return self._lrs() if self._is_initial else self._scaled(self.gamma)

    def _get_closed_form_lr(self) -> list[Lr]:
        return [b * self.gamma**self.last_epoch for b in self.base_lrs]


class PolynomialLR(LRScheduler, _torch.PolynomialLR):
    """``η_t = η_0 · (1 − min(t, T) / T)^power``."""

    def __init__(
        self, optimizer: Optimizer, total_iters: int = 5, power: float = 1.0, last_epoch: int = -1
    ) -> None:
        self.total_iters = total_iters
        self.power = power
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Lr]:
        self._warn_outside_step()
        n, t = self.total_iters, self.last_epoch
        if self._is_initial or t > n:
            return self._lrs()
        return self._scaled(((1.0 - t / n) / (1.0 - (t - 1) / n)) ** self.power)

    def _get_closed_form_lr(self) -> list[Lr]:
        n = self.total_iters
        return [b * (1.0 - min(n, self.last_epoch) / n) ** self.power for b in self.base_lrs]


def _half_cosine(t: float, period: float) -> float:
    """``(1 + cos(π t / period)) / 2``: 1 at ``t = 0``, 0 at ``t = period``."""
    return (1 + math.cos(math.pi * t / period)) / 2


class CosineAnnealingLR(LRScheduler, _torch.CosineAnnealingLR):
    """``η_t = η_min + (η_0 − η_min) · (1 + cos(π t / T_max)) / 2`` (SGDR without restarts).

    The chainable form follows the curve from the current lr, and past ``T_max`` keeps
    going (the cosine rises again), as torch's does.
    """

    def __init__(
        self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Lr]:
        self._warn_outside_step()
        t, T, lo = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return self._lrs()
        if self._step_count == 1 and t > 0:
            return [lo + (b - lo) * (1 + math.cos(t * math.pi / T)) / 2 for b in self.base_lrs]
        if (t - 1 - T) % (2 * T) == 0:  # leaving the trough: the ratio below would be 0/0
            return [
                g["lr"] + (b - lo) * (1 - math.cos(math.pi / T)) / 2
                for b, g in zip(self.base_lrs, self.optimizer.param_groups, strict=True)
            ]
        ratio = (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
        return [ratio * (g["lr"] - lo) + lo for g in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[Lr]:
        lo = self.eta_min
        return [
            lo + (b - lo) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
            for b in self.base_lrs
        ]


class CosineAnnealingWarmRestarts(LRScheduler, _torch.CosineAnnealingWarmRestarts):
    """SGDR: ``η = η_min + (η_0 − η_min) · (1 + cos(π T_cur / T_i)) / 2``.

    ``T_cur`` counts epochs since the last restart; a restart happens when it reaches
    ``T_i``, and then ``T_i ← T_i · T_mult``. ``step(epoch)`` may take fractional epochs.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        T_0: int,
        T_mult: int = 1,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if T_0 <= 0 or not isinstance(T_0, int):
            raise ValueError(f"T_0 must be a positive int, got {T_0!r}")
        if T_mult < 1 or not isinstance(T_mult, int):
            raise ValueError(f"T_mult must be an int >= 1, got {T_mult!r}")
        if not isinstance(eta_min, (float, int)):
            raise ValueError(f"eta_min must be a float or int, got {type(eta_min).__name__}")
        self.T_0 = T_0
        self.T_i = T_0
        self.T_mult = T_mult
        self.eta_min = eta_min
        self.T_cur: float = last_epoch  # type: ignore[assignment]
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Lr]:
        self._warn_outside_step()
        lo = self.eta_min
        return [
            lo + (b - lo) * (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2
            for b in self.base_lrs
        ]

    def step(self, epoch: float | None = None) -> None:  # type: ignore[override]
        """Advance one epoch, or set the (possibly fractional) ``epoch`` (no warning here)."""
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur % self.T_i
                self.T_i = self.T_i * self.T_mult
        elif epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        elif epoch < self.T_0:
            self.T_i = self.T_0
            self.T_cur = epoch
        elif self.T_mult == 1:
            self.T_cur = epoch % self.T_0
        else:
            # restarts so far: the largest n with T_0 (T_mult^n − 1) / (T_mult − 1) <= epoch
            n = int(math.log(epoch / self.T_0 * (self.T_mult - 1) + 1, self.T_mult))
            self.T_cur = epoch - self.T_0 * (self.T_mult**n - 1) / (self.T_mult - 1)
            self.T_i = self.T_0 * self.T_mult**n
        self.last_epoch = math.floor(epoch)
        with _flag(self, "_get_lr_called_within_step"):
            values = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values, strict=True):
            _set_group_value(group, "lr", lr)
        self._last_lr = self._lrs()


# ----------------------------------------------------------------------------- cyclic


def _anneal_cos(start: Any, end: Any, pct: float) -> Any:
    """Cosine from ``start`` (pct 0) to ``end`` (pct 1)."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _anneal_linear(start: Any, end: Any, pct: float) -> Any:
    return (end - start) * pct + start


def _momentum_setup(
    sched: Any, optimizer: Optimizer, base: Any, high: Any, last_epoch: int
) -> tuple[list[Any], list[Any]]:
    """Shared by CyclicLR/OneCycleLR: check momentum support, store per-group bounds."""
    if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
        raise ValueError(
            "cycle_momentum=True needs an optimizer with `momentum` or `betas` "
            "(or pass cycle_momentum=False)"
        )
    sched.use_beta1 = "betas" in optimizer.defaults
    highs = _per_group("max_momentum", optimizer, high)
    bases = _per_group("base_momentum", optimizer, base)
    if last_epoch == -1:
        _set_momentum(optimizer, highs, sched.use_beta1)
        for m_hi, m_lo, group in zip(highs, bases, optimizer.param_groups, strict=True):
            group["max_momentum"] = m_hi
            group["base_momentum"] = m_lo
    return bases, highs


class CyclicLR(LRScheduler, _torch.CyclicLR):
    """Cyclical lr (Smith 2017), stepped per batch.

    A cycle is ``step_size_up + step_size_down`` steps; with ``x`` the position in it,
    ``η = base_lr + (max_lr − base_lr) · h(x) · scale_fn(c)`` where ``h`` rises 0 → 1 → 0
    linearly and ``c`` is the cycle number (``scale_mode='cycle'``) or the step count
    (``'iterations'``). Modes: ``triangular`` (scale 1), ``triangular2`` (halved each
    cycle), ``exp_range`` (``gamma^iterations``). Momentum cycles inversely.
    """

    use_beta1: bool  # set when cycle_momentum: the optimizer has betas, not momentum

    def __init__(
        self,
        optimizer: Optimizer,
        base_lr: float | list[float],
        max_lr: float | list[float],
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: Literal["triangular", "triangular2", "exp_range"] = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[float], float] | None = None,
        scale_mode: Literal["cycle", "iterations"] = "cycle",
        cycle_momentum: bool = True,
        base_momentum: float = 0.8,
        max_momentum: float = 0.9,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        base_lrs = _per_group("base_lr", optimizer, base_lr)
        if last_epoch == -1:
            for lr, group in zip(base_lrs, optimizer.param_groups, strict=True):
                _set_group_value(group, "lr", lr)
        self.max_lrs = _per_group("max_lr", optimizer, max_lr)
        up = float(step_size_up)
        down = float(step_size_down) if step_size_down is not None else up
        self.total_size = up + down  # type: ignore[assignment]
        self.step_ratio = up / self.total_size
        if mode not in ("triangular", "triangular2", "exp_range") and scale_fn is None:
            raise ValueError(
                f"CyclicLR mode must be 'triangular', 'triangular2' or 'exp_range' unless a "
                f"scale_fn is given, got {mode!r}"
            )
        self.mode = mode
        self.gamma = gamma
        self._scale_fn_ref: Callable[[float], float]
        self._scale_fn_custom = scale_fn
        self.scale_mode = scale_mode
        self._init_scale_fn()
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.base_momentums, self.max_momentums = _momentum_setup(
                self, optimizer, base_momentum, max_momentum, last_epoch
            )
        super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs

    def _init_scale_fn(self) -> None:
        if self._scale_fn_custom is not None:
            return
        if self.mode == "triangular":
            self._scale_fn_ref, self.scale_mode = _triangular, "cycle"
        elif self.mode == "triangular2":
            self._scale_fn_ref, self.scale_mode = _triangular2, "cycle"
        elif self.mode == "exp_range":
            self._scale_fn_ref = functools.partial(_exp_range, self.gamma)
            self.scale_mode = "iterations"

    # torch's names for the built-in scale functions (ours, below)
    @staticmethod
    def _triangular_scale_fn(x: float) -> float:
        return _triangular(x)

    @staticmethod
    def _triangular2_scale_fn(x: float) -> float:
        return _triangular2(x)

    @staticmethod
    def _exp_range_scale_fn(gamma: float, x: float) -> float:
        return _exp_range(gamma, x)

    def scale_fn(self, x: float) -> float:
        fn = self._scale_fn_custom if self._scale_fn_custom is not None else self._scale_fn_ref
        return fn(x)

    def get_lr(self) -> list[Lr]:
        self._warn_outside_step()
        cycle = math.floor(1 + self.last_epoch / self.total_size)
        x = 1.0 + self.last_epoch / self.total_size - cycle
        if x <= self.step_ratio:
            height = x / self.step_ratio
        else:
            height = (x - 1) / (self.step_ratio - 1)
        scale = self.scale_fn(cycle if self.scale_mode == "cycle" else self.last_epoch)
        lrs = [
            lo + (hi - lo) * height * scale
            for lo, hi in zip(self.base_lrs, self.max_lrs, strict=True)
        ]
        if self.cycle_momentum:
            momenta = [
                hi - (hi - lo) * height * scale
                for lo, hi in zip(self.base_momentums, self.max_momentums, strict=True)
            ]
            _set_momentum(self.optimizer, momenta, self.use_beta1)
        return lrs

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("_scale_fn_ref", None)
        state["_scale_fn_custom"] = (
            None if self._scale_fn_custom is None else _callable_state(self._scale_fn_custom)
        )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        custom = state_dict.pop("_scale_fn_custom")
        super().load_state_dict(state_dict)
        state_dict["_scale_fn_custom"] = custom
        if custom is not None:
            self._scale_fn_custom.__dict__.update(custom)
        self._init_scale_fn()


def _triangular(x: float) -> float:
    return 1.0


def _triangular2(x: float) -> float:
    return 1 / 2.0 ** (x - 1)


def _exp_range(gamma: float, x: float) -> float:
    return gamma**x


class OneCycleLR(LRScheduler, _torch.OneCycleLR):
    """1cycle policy (Smith & Topin 2018), stepped per batch.

    Phases (each annealed by cos or linear): ``initial_lr = max_lr / div_factor`` → ``max_lr``
    over ``pct_start · total_steps`` steps, then → ``min_lr = initial_lr / final_div_factor``.
    ``three_phase`` goes back to ``initial_lr`` symmetrically before the final anneal.
    Momentum moves inversely between ``max_momentum`` and ``base_momentum``.
    """

    use_beta1: bool  # set when cycle_momentum: the optimizer has betas, not momentum

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float | list[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: Literal["cos", "linear"] = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.85,
        max_momentum: float | list[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        if total_steps is not None:
            if total_steps <= 0 or not isinstance(total_steps, int):
                raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
            self.total_steps = total_steps
        elif epochs is not None and steps_per_epoch is not None:
            if not isinstance(epochs, int) or epochs <= 0:
                raise ValueError(f"epochs must be a positive int, got {epochs!r}")
            if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
                raise ValueError(f"steps_per_epoch must be a positive int, got {steps_per_epoch!r}")
            self.total_steps = epochs * steps_per_epoch
        else:
            raise ValueError("OneCycleLR needs total_steps, or both epochs and steps_per_epoch")
        up_end = float(pct_start * self.total_steps) - 1
        last = self.total_steps - 1
        phases = (
            [
                (up_end, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (float(2 * pct_start * self.total_steps) - 2, "max_lr", "initial_lr",
                 "base_momentum", "max_momentum"),
                (last, "initial_lr", "min_lr", "max_momentum", "max_momentum"),
            ]
            if three_phase
            else [
                (up_end, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (last, "max_lr", "min_lr", "base_momentum", "max_momentum"),
            ]
        )  # fmt: skip
        keys = ("end_step", "start_lr", "end_lr", "start_momentum", "end_momentum")
        self._schedule_phases: list[dict[str, Any]] = [  # type: ignore[assignment]
            dict(zip(keys, p, strict=True)) for p in phases
        ]
        if pct_start < 0 or pct_start > 1 or not isinstance(pct_start, float):
            raise ValueError(f"pct_start must be a float in [0, 1], got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self._anneal_func_type = anneal_strategy
        max_lrs = _per_group("max_lr", optimizer, max_lr)
        if last_epoch == -1:
            for hi, group in zip(max_lrs, optimizer.param_groups, strict=True):
                group["initial_lr"] = hi / div_factor
                group["max_lr"] = hi
                group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            _momentum_setup(self, optimizer, base_momentum, max_momentum, last_epoch)
        super().__init__(optimizer, last_epoch)

    # torch's names for the two anneal shapes (ours)
    @staticmethod
    def _annealing_cos(start: Any, end: Any, pct: float) -> Any:
        return _anneal_cos(start, end, pct)

    @staticmethod
    def _annealing_linear(start: Any, end: Any, pct: float) -> Any:
        return _anneal_linear(start, end, pct)

    def _anneal_func(self, start: Any, end: Any, pct: float) -> Any:
        kind = getattr(self, "_anneal_func_type", None)
        if kind is None:  # a pre-2.2 checkpoint stored the function itself
            return self.anneal_func(start, end, pct)  # type: ignore[attr-defined]
        if kind == "cos":
            return _anneal_cos(start, end, pct)
        if kind == "linear":
            return _anneal_linear(start, end, pct)
        raise ValueError(f"unknown anneal strategy {kind!r}")

    def get_lr(self) -> list[Lr]:
        self._warn_outside_step()
        t = self.last_epoch
        if t > self.total_steps:
            raise ValueError(
                f"OneCycleLR stepped {t} times, past its total_steps={self.total_steps}"
            )
        lrs = []
        momenta = []
        for group in self.optimizer.param_groups:
            start = 0.0
            for i, phase in enumerate(self._schedule_phases):
                end = phase["end_step"]
                if t <= end or i == len(self._schedule_phases) - 1:
                    pct = (t - start) / (end - start)
                    lrs.append(
                        self._anneal_func(group[phase["start_lr"]], group[phase["end_lr"]], pct)
                    )
                    if self.cycle_momentum:
                        momenta.append(
                            self._anneal_func(
                                group[phase["start_momentum"]], group[phase["end_momentum"]], pct
                            )
                        )
                    break
                start = end
        if self.cycle_momentum:
            _set_momentum(self.optimizer, momenta, self.use_beta1)
        return lrs


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


# ----------------------------------------------------------------------------- plateau


class ReduceLROnPlateau(LRScheduler, _torch.ReduceLROnPlateau):
    """Multiply lrs by ``factor`` once a metric stops improving for ``patience`` epochs.

    Improvement (mode, threshold_mode): min/rel ``a < best·(1 − thr)``, min/abs
    ``a < best − thr``, max/rel ``a > best·(1 + thr)``, max/abs ``a > best + thr``. After a
    reduction wait ``cooldown`` epochs; ``η ← max(η · factor, min_lr)``, skipped when the
    change would be ≤ ``eps``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        mode: Literal["min", "max"] = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: Literal["rel", "abs"] = "rel",
        cooldown: int = 0,
        min_lr: list[float] | float = 0,
        eps: float = 1e-8,
    ) -> None:
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau factor must be < 1.0, got {factor}")
        self.factor = factor
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != len(optimizer.param_groups):
                raise ValueError(
                    f"min_lr needs one value per param group: got {len(min_lr)} for "
                    f"{len(optimizer.param_groups)} param groups"
                )
            self.default_min_lr: float | None = None
            self.min_lrs = list(min_lr)
        else:
            self.default_min_lr = min_lr
            self.min_lrs = [min_lr] * len(optimizer.param_groups)
        self.patience = patience
        self.cooldown = cooldown
        self.eps = eps
        self.last_epoch = 0
        self._last_lr = self._lrs()
        self._init_is_better(mode=mode, threshold=threshold, threshold_mode=threshold_mode)
        self._reset()

    def _reset(self) -> None:
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def step(self, metrics: SupportsFloat, epoch: int | None = None) -> None:  # type: ignore[override]
        """Record one epoch's metric; reduce the lrs when it has plateaued."""
        current = float(metrics)
        if epoch is None:
            epoch = self.last_epoch + 1
        else:
            warnings.warn(_EPOCH_DEPRECATED, UserWarning, stacklevel=2)
        self.last_epoch = epoch
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self._reduce_lr(epoch)
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = self._lrs()

    def _reduce_lr(self, epoch: int) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(
                    f"the optimizer now has {len(groups)} param groups but min_lr was given "
                    f"for {len(self.min_lrs)}; update `min_lrs` to match"
                )
            self.min_lrs = [self.default_min_lr] * len(groups)
        for group, floor in zip(groups, self.min_lrs, strict=True):
            old = float(group["lr"])
            new = max(old * self.factor, floor)
            if old - new > self.eps:
                _set_group_value(group, "lr", new)

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min" and self.threshold_mode == "abs":
            return a < best - self.threshold
        if self.mode == "max" and self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def _init_is_better(self, mode: str, threshold: float, threshold_mode: str) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.mode = mode
        self.threshold = threshold
        self.threshold_mode = threshold_mode

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)
        self._init_is_better(self.mode, self.threshold, self.threshold_mode)
