"""LazyBatchNorm1d/2d/3d and LazyInstanceNorm1d/2d/3d: ``num_features`` inferred from the
first input's dim 1, through torch's lazy-module protocol.

The protocol (``torch.nn.modules.lazy.LazyModuleMixin``) is module bookkeeping, not
normalization, so it is torch's: a forward pre-hook that calls
:meth:`_LazyNormBase.initialize_parameters` on the first input, then swaps the instance's
class for ``cls_to_become`` -- here reimpl's ``BatchNorm2d`` etc., so a materialized lazy
module is the plain reimpl module; a load_state_dict pre-hook that materializes from a
checkpoint; and a state_dict that holds the uninitialized tensors as they are. What is
specific to normalization is written here: the uninitialized parameters and buffers (and
the counter, a real tensor from the start), their shape once the input is seen, and the
reset.

As torch's, the lazy instance norms take the lazy batch norms' defaults (``affine=True``,
``track_running_stats=True``), and read the channel count from dim 1 even of an
unbatched input.

Each class subclasses the ``torch.nn`` lazy class it replaces, so ``isinstance`` checks
hold (and it is not a ``torch.nn.BatchNorm2d`` until it materializes, as torch's is not).
"""

from typing import Any

import torch
from torch import Tensor
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from reimpl._compat import NORM_BIAS, drop_keyword
from reimpl.nn.modules.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm, _NormBase
from reimpl.nn.modules.instancenorm import (
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    _InstanceNorm,
)


class _LazyNormBase(_NormBase):
    """Uninitialized weight, bias and running statistics until the first input."""

    # LazyModuleMixin's attributes, set by __init__ (declared for the type checker)
    _load_hook: Any
    _initialize_hook: Any

    def __init__(
        self, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
        track_running_stats: bool = True, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None, *, bias: bool = True,
    ) -> None:  # fmt: skip
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        # no tensors yet: zero features, no affine parameters or statistics for now
        _NormBase.__init__(self, 0, eps, momentum, False, False, device=device, bias=False)
        # what LazyModuleMixin.__init__ adds to a module (it would first run torch's own
        # batch-norm set-up, which this class replaces); `lazy`: self, as the mixin types
        # it -- its methods and the uninitialized tensors are outside _NormBase's types
        lazy: Any = self
        self._load_hook = self._register_load_state_dict_pre_hook(lazy._lazy_load_hook)
        self._initialize_hook = self.register_forward_pre_hook(
            lazy._infer_parameters, with_kwargs=True
        )
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            lazy.weight = UninitializedParameter(**factory)
            if bias:
                lazy.bias = UninitializedParameter(**factory)
        if track_running_stats:
            self.running_mean = UninitializedBuffer(**factory)
            self.running_var = UninitializedBuffer(**factory)
            self.num_batches_tracked = torch.tensor(0, dtype=torch.long, device=device)

    def reset_parameters(self) -> None:
        """As the module's own reset, once the tensors have their shape (else nothing)."""
        lazy: Any = self
        if not lazy.has_uninitialized_params() and self.num_features != 0:
            _NormBase.reset_parameters(self)

    def initialize_parameters(self, input: Tensor, *args: Any, **kwargs: Any) -> None:
        """Give every uninitialized tensor ``input.shape[1]`` elements, then reset them."""
        lazy: Any = self
        if not lazy.has_uninitialized_params():
            return
        self.num_features = input.shape[1]
        shape = (self.num_features,)
        for t in (self.weight, self.bias, self.running_mean, self.running_var):
            if isinstance(t, (UninitializedParameter, UninitializedBuffer)):
                t.materialize(shape)
        self.reset_parameters()


# (type: ignore[misc] below: torch's lazy base types weight and bias as uninitialized
# parameters, its _NormBase as parameters -- one class holds one, then the other)


class LazyBatchNorm1d(_LazyNormBase, _BatchNorm, torch.nn.LazyBatchNorm1d):  # type: ignore[misc]
    """:class:`~reimpl.nn.BatchNorm1d` with ``num_features`` from the first input."""

    cls_to_become = BatchNorm1d
    _check_input_dim = BatchNorm1d._check_input_dim


class LazyBatchNorm2d(_LazyNormBase, _BatchNorm, torch.nn.LazyBatchNorm2d):  # type: ignore[misc]
    """:class:`~reimpl.nn.BatchNorm2d` with ``num_features`` from the first input."""

    cls_to_become = BatchNorm2d
    _check_input_dim = BatchNorm2d._check_input_dim


class LazyBatchNorm3d(_LazyNormBase, _BatchNorm, torch.nn.LazyBatchNorm3d):  # type: ignore[misc]
    """:class:`~reimpl.nn.BatchNorm3d` with ``num_features`` from the first input."""

    cls_to_become = BatchNorm3d
    _check_input_dim = BatchNorm3d._check_input_dim


class LazyInstanceNorm1d(_LazyNormBase, _InstanceNorm, torch.nn.LazyInstanceNorm1d):  # type: ignore[misc]
    """:class:`~reimpl.nn.InstanceNorm1d` with ``num_features`` from the first input."""

    cls_to_become = InstanceNorm1d
    _check_input_dim = InstanceNorm1d._check_input_dim
    _get_no_batch_dim = InstanceNorm1d._get_no_batch_dim


class LazyInstanceNorm2d(_LazyNormBase, _InstanceNorm, torch.nn.LazyInstanceNorm2d):  # type: ignore[misc]
    """:class:`~reimpl.nn.InstanceNorm2d` with ``num_features`` from the first input."""

    cls_to_become = InstanceNorm2d
    _check_input_dim = InstanceNorm2d._check_input_dim
    _get_no_batch_dim = InstanceNorm2d._get_no_batch_dim


class LazyInstanceNorm3d(_LazyNormBase, _InstanceNorm, torch.nn.LazyInstanceNorm3d):  # type: ignore[misc]
    """:class:`~reimpl.nn.InstanceNorm3d` with ``num_features`` from the first input."""

    cls_to_become = InstanceNorm3d
    _check_input_dim = InstanceNorm3d._check_input_dim
    _get_no_batch_dim = InstanceNorm3d._get_no_batch_dim


if not NORM_BIAS:
    for _cls in (
        LazyBatchNorm1d, LazyBatchNorm2d, LazyBatchNorm3d,
        LazyInstanceNorm1d, LazyInstanceNorm2d, LazyInstanceNorm3d,
    ):  # fmt: skip
        drop_keyword(_cls, "bias")
