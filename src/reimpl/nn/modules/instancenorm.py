"""InstanceNorm1d/2d/3d: torch's constructor signatures (``affine`` and
``track_running_stats`` off by default), parameter and buffer names, repr and state_dict
handling, over :func:`reimpl.nn.functional.instance_norm`.

As torch's: each sample's statistics normalize it in training and, without running
statistics, in evaluation too; with ``track_running_stats`` training updates them (the
batch counter ``num_batches_tracked`` exists but is never advanced, and ``momentum=None``
means no update) and evaluation uses them. An unbatched input (one dim fewer) runs as a
batch of one. A channel count other than ``num_features`` is an error with ``affine``
and a warning without (``num_features`` is then unused).

A checkpoint without a version (saved before torch 0.4, when instance norm tracked
running statistics by default) that holds running statistics for a module that does not
track them loads with an error message naming them, the statistics dropped -- torch's rule.

Each class subclasses the ``torch.nn`` class it replaces, so ``isinstance`` checks hold;
every method torch's classes define is defined here again (or in the shared
:class:`~reimpl.nn.modules.batchnorm._NormBase`), so no torch instance-norm code runs.
"""

import warnings
from typing import Any, Optional

import torch
from torch import Tensor

from reimpl._compat import NORM_BIAS, drop_keyword
from reimpl.nn import functional as F
from reimpl.nn.functional import _scripted as S
from reimpl.nn.modules.batchnorm import _NormBase


def _scripted_instance_norm(
    input: Tensor,
    running_mean: Optional[Tensor],  # noqa: UP045  (TorchScript's forms)
    running_var: Optional[Tensor],  # noqa: UP045
    weight: Optional[Tensor],  # noqa: UP045
    bias: Optional[Tensor],  # noqa: UP045
    use_input_stats: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """Instance norm under TorchScript: batch norm's scripted composite on the
    ``(1, N·C, *)`` view with the per-channel tensors repeated, the running statistics'
    copies averaged back (the eager function's recipe, without its dtype rules)."""
    if use_input_stats:
        count = 1
        for s in input.shape[2:]:
            count *= s
        if count == 1:
            raise ValueError("instance_norm needs more than one spatial element per channel")
    elif running_mean is None or running_var is None:
        raise RuntimeError("instance_norm: use_input_stats=False needs running statistics")
    n = input.size(0)
    c = input.size(1)
    shape = [1, n * c]
    for s in input.shape[2:]:
        shape.append(s)
    rm: Optional[Tensor] = None  # noqa: UP045
    rv: Optional[Tensor] = None  # noqa: UP045
    w: Optional[Tensor] = None  # noqa: UP045
    b: Optional[Tensor] = None  # noqa: UP045
    if running_mean is not None:
        rm = running_mean.reshape(-1).repeat(n)
    if running_var is not None:
        rv = running_var.reshape(-1).repeat(n)
    if weight is not None:
        w = weight.reshape(-1).repeat(n)
    if bias is not None:
        b = bias.reshape(-1).repeat(n)
    flat = input.contiguous().view(shape)
    if input.numel() == 0:  # nothing to normalize, no statistics to fold in
        out = flat.clone()
    else:
        out = S.batch_norm(flat, rm, rv, w, b, use_input_stats, momentum, eps)
    if not use_input_stats:
        return out.view(input.shape)
    with torch.no_grad():
        if running_mean is not None and rm is not None:
            running_mean.copy_(rm.view(n, c).mean(0))
        if running_var is not None and rv is not None:
            running_var.copy_(rv.view(n, c).mean(0))
    return out.view(input.shape)


class _InstanceNorm(_NormBase):
    """Parameters, buffers and forward shared by the instance-norm modules."""

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
        affine: bool = False, track_running_stats: bool = False,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None, *,
        bias: bool = True,
    ) -> None:  # fmt: skip
        _NormBase.__init__(
            self,
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device=device,
            dtype=dtype,
            bias=bias,
        )

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def _get_no_batch_dim(self) -> int:
        """The rank of an unbatched input (a batched one has one dim more)."""
        raise NotImplementedError

    def _handle_no_batch_input(self, input: Tensor) -> Tensor:
        return self._apply_instance_norm(input.unsqueeze(0)).squeeze(0)

    def _apply_instance_norm(self, input: Tensor) -> Tensor:
        momentum = 0.0 if self.momentum is None else self.momentum
        use_input_stats = self.training or not self.track_running_stats
        if torch.jit.is_scripting():
            return _scripted_instance_norm(
                input, self.running_mean, self.running_var, self.weight, self.bias,
                use_input_stats, momentum, self.eps,
            )  # fmt: skip
        return F.instance_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            use_input_stats,
            momentum,
            self.eps,
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        if local_metadata.get("version") is None and not self.track_running_stats:
            # an unversioned checkpoint is from before torch 0.4, when instance norm
            # tracked running statistics by default: name them, and drop them
            keys = [prefix + n for n in ("running_mean", "running_var") if prefix + n in state_dict]
            if keys:
                name = type(self).__name__
                error_msgs.append(
                    f"{name} does not track running statistics (track_running_stats=False), "
                    f"but the state_dict holds {' and '.join(repr(k) for k in keys)}: an "
                    "old checkpoint (saved before torch 0.4, when instance norm tracked them "
                    "by default) maybe. Remove those keys to load it as is, or build the "
                    f"{name} with track_running_stats=True to use them."
                )
                for key in keys:
                    state_dict.pop(key)
        _NormBase._load_from_state_dict(
            self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
            error_msgs,
        )  # fmt: skip

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        feature_dim = input.dim() - self._get_no_batch_dim()
        if input.size(feature_dim) != self.num_features:
            if self.affine:
                raise ValueError(
                    f"instance norm: the input has {input.size(feature_dim)} channels "
                    f"(dim {feature_dim}), but num_features is {self.num_features}"
                )
            warnings.warn(
                f"instance norm: the input has {input.size(feature_dim)} channels (dim "
                f"{feature_dim}), not num_features={self.num_features}; with affine=False "
                "num_features is not used, so leaving it out silences this warning",
                stacklevel=2,
            )
        if input.dim() == self._get_no_batch_dim():
            return self._handle_no_batch_input(input)
        return self._apply_instance_norm(input)


class InstanceNorm1d(_InstanceNorm, torch.nn.InstanceNorm1d):
    """Instance normalization of ``(N, C, L)`` or unbatched ``(C, L)`` inputs over L."""

    def _get_no_batch_dim(self) -> int:
        return 2

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise ValueError(
                f"InstanceNorm1d takes (C, L) or (N, C, L) inputs, not {input.dim()}-D"
            )


class InstanceNorm2d(_InstanceNorm, torch.nn.InstanceNorm2d):
    """Instance normalization of ``(N, C, H, W)`` or unbatched ``(C, H, W)`` inputs over
    H and W."""

    def _get_no_batch_dim(self) -> int:
        return 3

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (3, 4):
            raise ValueError(
                f"InstanceNorm2d takes (C, H, W) or (N, C, H, W) inputs, not {input.dim()}-D"
            )


class InstanceNorm3d(_InstanceNorm, torch.nn.InstanceNorm3d):
    """Instance normalization of ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)`` inputs
    over D, H and W."""

    def _get_no_batch_dim(self) -> int:
        return 4

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (4, 5):
            raise ValueError(
                f"InstanceNorm3d takes (C, D, H, W) or (N, C, D, H, W) inputs, not {input.dim()}-D"
            )


if not NORM_BIAS:
    for _cls in (InstanceNorm1d, InstanceNorm2d, InstanceNorm3d):
        drop_keyword(_cls, "bias")
