"""CyclicLR and OneCycleLR: lr (and momentum) cycling between bounds."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Literal

from torch.optim import Optimizer
from torch.optim import lr_scheduler as _torch

from reimpl.optim.lr_scheduler._base import (
    Lr,
    LRScheduler,
    _callable_state,
    _check_optimizer,
    _per_group,
    _set_group_value,
    _set_momentum,
)

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


def _triangular(x: float) -> float:
    return 1.0


def _triangular2(x: float) -> float:
    return 1 / 2.0 ** (x - 1)


def _exp_range(gamma: float, x: float) -> float:
    return gamma**x


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

    # torch's names for the built-in scale functions (ours, above)
    _triangular_scale_fn = staticmethod(_triangular)
    _triangular2_scale_fn = staticmethod(_triangular2)
    _exp_range_scale_fn = staticmethod(_exp_range)

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
    _annealing_cos = staticmethod(_anneal_cos)
    _annealing_linear = staticmethod(_anneal_linear)

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
