"""BatchNorm1d/2d/3d: torch's constructor signatures, parameter and buffer names
(``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``),
``reset_*`` methods, repr and state_dict versioning, over :func:`reimpl.nn.functional.batch_norm`.

A state_dict moves both ways between these and torch's modules. Old checkpoints (saved
before ``num_batches_tracked`` existed, state_dict version < 2) load with the module's
current counter (or a fresh 0) in its place, as torch does.

Each class subclasses the ``torch.nn`` class it replaces, so torch's own ``isinstance``
checks accept it (``torch.optim.swa_utils.update_bn``,
``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, ``torch.func.replace_all_batch_norm_
modules_``); every method torch's classes define is defined here again, so no torch
batch-norm code runs.
"""

from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn import Parameter, init

from reimpl._compat import NORM_BIAS, drop_keyword
from reimpl.nn import functional as F
from reimpl.nn.functional import _autocast
from reimpl.nn.functional import _scripted as S
from reimpl.nn.functional._sync_batchnorm import SyncBatchNormFunction


class _NormBase(torch.nn.Module):
    """Parameters, buffers and bookkeeping shared by the batch-norm modules."""

    _version = 2
    num_features: int
    eps: float
    # TorchScript reads these annotations and parses typing's forms, not PEP 604 unions
    momentum: Optional[float]  # noqa: UP045
    affine: bool
    track_running_stats: bool
    # weight / bias: Parameter or None, typed as torch's _NormBase types them. The buffers'
    # types are for the type checker only: TorchScript infers them from the values, and
    # keeps only Tensor-typed attributes as buffers (state_dict), not Optional[Tensor] ones.
    if TYPE_CHECKING:
        running_mean: Tensor | None
        running_var: Tensor | None
        num_batches_tracked: Tensor | None

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
        affine: bool = True, track_running_stats: bool = True,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None, *,
        bias: bool = True,
    ) -> None:  # fmt: skip
        # nn.Module's own set-up only: torch's batch-norm classes sit after this one in the MRO
        torch.nn.Module.__init__(self)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = Parameter(torch.empty(num_features, **factory))
            if bias:
                self.bias = Parameter(torch.empty(num_features, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, batch counter 0 (no-op when untracked)."""
        if self.track_running_stats:
            assert self.running_mean is not None and self.running_var is not None
            assert self.num_batches_tracked is not None
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset running statistics; weight to 1 and bias to 0."""
        self.reset_running_stats()
        if self.weight is not None:
            init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, "
            + (f"bias={self.bias is not None}, " if NORM_BIAS else "")
            + f"track_running_stats={self.track_running_stats}"
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
        version = local_metadata.get("version")
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            # Checkpoints from before the counter existed: keep ours (or start at 0).
            ours = self.num_batches_tracked
            usable = ours is not None and ours.device != torch.device("meta")
            state_dict[key] = ours if usable else torch.tensor(0, dtype=torch.long)
        torch.nn.Module._load_from_state_dict(
            self,
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )


class _BatchNorm(_NormBase):
    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self._scripted_forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        # Batch statistics in training, and in eval when there are no running ones.
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        # Running statistics are passed when they are used or updated.
        pass_running = not self.training or self.track_running_stats
        return F.batch_norm(
            input,
            self.running_mean if pass_running else None,
            self.running_var if pass_running else None,
            self.weight,
            self.bias,
            use_batch,
            factor,
            self.eps,
        )

    def _scripted_forward(self, input: Tensor) -> Tensor:
        """``forward`` under TorchScript: the same bookkeeping, over the scripted composite."""
        self._check_input_dim(input)
        momentum = self.momentum
        factor = 0.0 if momentum is None else momentum
        counter: Optional[Tensor] = self.num_batches_tracked  # noqa: UP045
        if self.training and self.track_running_stats and counter is not None:
            counter.add_(1)
            if momentum is None:  # cumulative moving average
                factor = 1.0 / float(counter)
        running_mean: Optional[Tensor] = self.running_mean  # noqa: UP045
        running_var: Optional[Tensor] = self.running_var  # noqa: UP045
        use_batch = self.training or (running_mean is None and running_var is None)
        if self.training and not self.track_running_stats:
            running_mean = None
            running_var = None
        return S.batch_norm(
            input, running_mean, running_var, self.weight, self.bias, use_batch, factor, self.eps
        )


class BatchNorm1d(_BatchNorm, torch.nn.BatchNorm1d):
    """Batch normalization of ``(N, C)`` or ``(N, C, L)`` inputs over N (and L)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class BatchNorm2d(_BatchNorm, torch.nn.BatchNorm2d):
    """Batch normalization of ``(N, C, H, W)`` inputs over N, H, W."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")


class BatchNorm3d(_BatchNorm, torch.nn.BatchNorm3d):
    """Batch normalization of ``(N, C, D, H, W)`` inputs over N, D, H, W."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(f"expected 5D input (got {input.dim()}D input)")


def _is_batch_norm(module: torch.nn.Module) -> bool:
    """Ours or torch's BatchNorm*d / SyncBatchNorm / lazy ones: by class ancestry name."""
    return any(cls.__name__ == "_BatchNorm" for cls in type(module).__mro__)


class SyncBatchNorm(_BatchNorm, torch.nn.SyncBatchNorm):
    """Batch normalization of ``(N, C, *)`` inputs whose training statistics span every
    rank of ``process_group`` (default: the whole world).

    Same constructor, parameters, buffers and state_dict as torch's ``SyncBatchNorm``. In
    training under an initialized process group of more than one rank, mean and variance
    are those of all ranks' inputs together (ranks may hold different batch sizes, even
    empty ones) and the input gradient's sums are reduced likewise; weight and bias
    gradients stay local, for DistributedDataParallel to average. Otherwise (evaluation,
    no process group, world size 1) it is plain batch norm.

    Unlike torch's, which insists on an accelerator, CPU tensors are accepted (useful with
    the gloo backend). Every rank must call forward (and backward) the same number of times.
    Being a ``torch.nn.SyncBatchNorm``, it is refused by ``DistributedDataParallel`` in a
    CPU model, as torch's is (DDP's own check); use it there without DDP's wrapper, or
    convert to it only for accelerator models.
    """

    process_group: Any

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
        affine: bool = True, track_running_stats: bool = True, process_group: Any | None = None,
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
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _check_non_zero_input_channels(self, input: Tensor) -> None:
        if input.size(1) == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            assert self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        pass_running = not self.training or self.track_running_stats
        running_mean = self.running_mean if pass_running else None
        running_var = self.running_var if pass_running else None
        group = None
        world_size = 1
        if use_batch and self.training and dist.is_available() and dist.is_initialized():
            group = self.process_group if self.process_group else dist.group.WORLD
            world_size = dist.get_world_size(group)
        if world_size <= 1:
            return F.batch_norm(
                input,
                running_mean,
                running_var,
                self.weight,
                self.bias,
                use_batch,
                factor,
                self.eps,
            )
        args = (input, self.weight, self.bias, running_mean, running_var, self.eps, factor)
        ac = _autocast.active(input)
        if ac is None:
            out: Tensor = SyncBatchNormFunction.apply(*args, group, world_size)
            return out
        with _autocast.off(ac):  # batch norm is on no autocast list: arguments as they are
            out = SyncBatchNormFunction.apply(*args, group, world_size)
        return out

    @classmethod
    def convert_sync_batchnorm(
        cls, module: torch.nn.Module, process_group: Any | None = None
    ) -> torch.nn.Module:
        """Replace every batch-norm layer in ``module`` (ours or torch's, any depth) by a
        :class:`SyncBatchNorm` sharing its parameters, buffers, ``requires_grad`` and
        training mode; returns the new root if ``module`` itself is one."""
        out = module
        if _is_batch_norm(module):
            bn: Any = module
            out = cls(
                bn.num_features,
                bn.eps,
                bn.momentum,
                bn.affine,
                bn.track_running_stats,
                process_group,
                **({"bias": bn.bias is not None} if NORM_BIAS else {}),  # type: ignore[arg-type]
            )
            if bn.affine:
                with torch.no_grad():
                    out.weight = bn.weight
                    out.bias = bn.bias
            out.running_mean = bn.running_mean
            out.running_var = bn.running_var
            out.num_batches_tracked = bn.num_batches_tracked
            out.training = bn.training
            if hasattr(bn, "qconfig"):
                out.qconfig = bn.qconfig
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return out


if not NORM_BIAS:  # (the base classes keep it: the instance and lazy norms pass it on)
    for _cls in (BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm):
        drop_keyword(_cls, "bias")
