"""What every reimpl optimizer shares: one ``step()``, state creation, checkpoint upgrades.

An optimizer is a subclass of :class:`ReimplOptimizer` and of the torch class it replaces
(``class Adam(ReimplOptimizer, torch.optim.Adam)``), so it *is* that torch class while
every method that computes is ours. The subclass holds only what is particular to its
algorithm:

- ``__init__``: validation and ``defaults``, then :meth:`ReimplOptimizer._setup`;
- ``_Tensors``: a NamedTuple of the tensor lists its update forms take, one field per
  role -- ``param``, ``grad``, then the state keys (``step`` for the counters); the same
  names are the keys of ``self.state[p]`` and the C kernels' roles;
- ``_HP``: a NamedTuple of one group's hyperparameters as the forms read them;
- ``_forms()``: its :class:`~reimpl.optim._fused.Forms` -- per-tensor, multi-tensor and the
  C kernel's scalars (the fused path itself is :func:`~reimpl.optim._fused.fused_step`);
- optionally ``_new_state`` (zeros like the param, by default) and ``_keeps`` (which
  state this group keeps, all by default).

The torch base :class:`torch.optim.Optimizer` keeps ``param_groups``, ``state_dict`` /
``load_state_dict``, hooks and ``zero_grad``, so those are exactly torch's.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from reimpl.optim._common import (
    TensorList,
    check_steps,
    choose_path,
    graph_capture_health_check,
    new_step,
    squeeze_scalar,
    use_grad_for_differentiable,
)
from reimpl.optim._fused import Forms, amp_scaling, check_fused_flags, check_fused_param, fused_step

__all__ = ["Optimizer", "ParamsT", "ReimplOptimizer"]


def _grad_mode(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` with autograd on exactly when the optimizer is ``differentiable`` (torch's
    decorator), or off where torch's class has no such option (Adafactor)."""
    with_option = use_grad_for_differentiable(step)

    @functools.wraps(step)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if "differentiable" in self.defaults:
            return with_option(self, *args, **kwargs)
        with torch.no_grad():
            return step(self, *args, **kwargs)

    return wrapper


class ReimplOptimizer:
    """The shared part of reimpl's optimizers (a mixin placed before the torch class)."""

    #: the lists the forms take, one field per role: param, grad, then state keys
    _Tensors: ClassVar[Any]
    #: one group's hyperparameters as the forms read them (a NamedTuple class)
    _HP: ClassVar[Any]
    #: group keys a checkpoint from an older torch may lack, with their defaults
    _group_defaults: ClassVar[tuple[tuple[str, Any], ...]] = ()
    #: state created on the first step rather than with the rest (SGD's momentum buffer)
    _lazy: ClassVar[tuple[str, ...]] = ()
    #: sparse gradients are accepted (on the per-tensor and multi-tensor paths)
    _sparse_ok: ClassVar[bool] = False
    #: ``fused=True`` takes GradScaler's fused protocol (see :meth:`_setup`)
    _fused_amp_scaling: ClassVar[bool] = True

    # the torch base class provides these
    defaults: dict[str, Any]
    param_groups: list[dict[str, Any]]
    state: defaultdict[Tensor, Any]

    def _forms(self) -> Forms:
        """The optimizer's update rule in each form; a method, looked up at each step (not
        a class constant), so a test can spy on a form by its module name."""
        raise NotImplementedError

    def _setup(
        self, params: ParamsT, defaults: dict[str, Any], *, fused_beyond_torch: bool | None = None
    ) -> None:
        """torch's base set-up, then the fused flags' checks. ``fused_beyond_torch``: the
        ``fused`` of an optimizer torch has no fused path for, kept in the defaults only
        when asked for, so default checkpoints stay exactly torch's format."""
        if fused_beyond_torch:
            defaults = {**defaults, "fused": fused_beyond_torch}
        Optimizer.__init__(self, params, defaults)  # type: ignore[arg-type]  # torch's base, not the class we replace
        fused = defaults.get("fused")
        check_fused_flags(fused, defaults.get("foreach"), defaults.get("differentiable", False))
        if fused:  # GradScaler hands the scale and found_inf to step (see amp_scaling)
            self._step_supports_amp_scaling = self._fused_amp_scaling

    def __setstate__(self, state: dict[str, Any]) -> None:
        Optimizer.__setstate__(self, state)  # type: ignore[arg-type]
        scalars = self._forms().scalars
        for group in self.param_groups:
            for key, value in (("maximize", False), ("foreach", None), *self._group_defaults):
                group.setdefault(key, value)
            if "differentiable" in self.defaults:  # not where torch's class has no such option
                group.setdefault("differentiable", False)
            for p in group["params"]:
                s = self.state.get(p, {})
                for key in scalars:  # numbers in an old torch's checkpoint: counter-like tensors
                    if key in s and not torch.is_tensor(s[key]):
                        s[key] = self._new_step(p, group).fill_(float(s[key]))

    # ------------------------------------------------------------------ state

    def _new_step(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        """A zero counter; on the param's device for capturable and fused steps (no host
        sync there), else on the CPU (no kernel launch per step)."""
        fused = group.get("fused")
        return new_step(p, on_param_device=bool(group.get("capturable") or fused), fused=fused)

    def _keeps(self, group: dict[str, Any], key: str) -> bool:
        """Whether ``group``'s configuration has the state ``key``."""
        return True

    def _new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """The state of a param's first step: a step counter and zeros like the param."""
        state = {}
        for key in sorted(
            self._Tensors._fields[2:], key=lambda k: k != "step"
        ):  # torch's key order
            if key == "step":
                state[key] = self._new_step(p, group)
            elif key not in self._lazy and self._keeps(group, key):
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _init_group(self, group: dict[str, Any], *lists: list[Any]) -> tuple[bool, bool]:
        """Append each param that has a gradient, its gradient and the state it keeps to
        ``lists`` (in ``_Tensors`` order), creating state on its first step. Returns
        (has_sparse_grad, has_complex). torch.compile runs this method once, outside the
        graph, by its name and list arguments; so it keeps torch's shape."""
        params, grads, *states = lists
        has_sparse = has_complex = False
        # decided once per group, not per param: which state this configuration keeps
        kept = [
            (key, lst, key in self._lazy)
            for key, lst in zip(self._Tensors._fields[2:], states, strict=True)
            if self._keeps(group, key)
        ]
        fused = group.get("fused")
        track_complex = "has_complex" in self._HP._fields
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                if not self._sparse_ok:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                has_sparse = True
            if fused:
                check_fused_param(p)
            if track_complex:
                has_complex |= torch.is_complex(p)
            params.append(p)
            grads.append(grad)
            if not kept:
                continue
            state = self.state.get(p)
            if not state:
                state = self._new_state(p, group)
                if state:  # no empty entries (SGD's buffers start on the first step)
                    self.state[p] = state
            for key, lst, lazy in kept:
                lst.append(state.get(key) if lazy else state[key])
        return has_sparse, has_complex

    # ------------------------------------------------------------------- step

    def _path(self, group: dict[str, Any], params: TensorList) -> str:
        return choose_path(
            params,
            foreach=group["foreach"],
            fused=group.get("fused"),
            differentiable=group.get("differentiable", False),
        )

    def _hparams(self, group: dict[str, Any], **flags: bool) -> Any:
        fields = self._HP._fields
        if "beta1" in fields:  # the rules read (beta1, beta2) as the papers name them
            group = {**group, "beta1": group["betas"][0], "beta2": group["betas"][1]}
        # one-element Tensor hyperparameters as 0-dim tensors (they broadcast like numbers)
        return self._HP(**{k: squeeze_scalar(group[k]) for k in fields if k in group}, **flags)

    @_grad_mode
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every param with a gradient; ``closure`` re-evaluates the loss."""
        if "capturable" in self.defaults:
            graph_capture_health_check(self)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        forms = self._forms()
        for group in self.param_groups:
            lists: list[TensorList] = [[] for _ in self._Tensors._fields]
            has_sparse, has_complex = self._init_group(group, *lists)
            fields = self._HP._fields
            flags = {"has_sparse_grad": has_sparse, "has_complex": has_complex}
            hp = self._hparams(group, **{k: v for k, v in flags.items() if k in fields})
            t = self._Tensors(*lists)
            if "step" in t._fields:
                check_steps(t.step)
            path = self._path(group, t.param)
            if path == "fused":
                fused_step(type(self).__name__, forms, t, hp, amp_scaling(self, path))
            else:
                amp_scaling(self, path)  # refuses GradScaler's hand-over off the fused path
                (forms.single if path == "single" else forms.multi)(t, hp)
            self._after_step(group, t)
        return loss

    def _after_step(self, group: dict[str, Any], t: Any) -> None:
        """Store state a form created (lazy state, ``None`` in the lists until then)."""
        for key in self._lazy:
            if self._keeps(group, key):
                for p, x in zip(t.param, getattr(t, key), strict=True):
                    self.state[p][key] = x
