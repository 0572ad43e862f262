"""Output layers with a loss for large label sets, which never form the full softmax.

* :class:`LinearCrossEntropyLoss` -- a linear layer and cross-entropy in one, computed in
  row chunks so the (N, num_classes) logits never exist at once (torch >= 2.13 has the
  class; reimpl provides it on every supported torch).
* :class:`AdaptiveLogSoftmaxWithLoss` -- Grave et al.'s adaptive softmax: frequent classes
  in a small head, rare ones in clusters behind low-rank projections, evaluated only for the
  rows whose target falls there.

Both subclass the torch class they replace (where torch has it) and hold their parameters
as torch does (plain ``nn.Linear`` layers under torch's names), so a ``state_dict`` moves
between torch and reimpl; the log-softmax, the gathering and the loss are reimpl's.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from reimpl.nn import functional as F
from reimpl.nn.functional import log_softmax
from reimpl.nn.modules.loss import _WeightedLoss

# torch < 2.13 has no LinearCrossEntropyLoss: ours is then a plain Module (nothing to be an
# instance of, so nothing for isinstance checks elsewhere to expect)
_TorchLinearCrossEntropyLoss: type = getattr(torch.nn, "LinearCrossEntropyLoss", torch.nn.Module)


class LinearCrossEntropyLoss(_WeightedLoss, _TorchLinearCrossEntropyLoss):
    """Cross-entropy of ``linear(input)`` against ``target``, the linear layer held inside.

    ``self.linear`` is an ``nn.Linear(in_features, num_classes * prod(out_features))``:
    its flat weight is viewed as (num_classes, *out_features, in_features) in
    :meth:`forward`, as torch's class does, so checkpoints are interchangeable.
    """

    num_classes: int
    out_features: tuple[int, ...]
    ignore_index: int | None
    label_smoothing: float
    options: Any

    def __init__(
        self, in_features: int, num_classes: int, *, out_features: tuple[int, ...] = (),
        bias: bool = False, device: Any = None, dtype: Any = None, reduction: str = "mean",
        weight: Tensor | None = None, ignore_index: int | None = None,
        label_smoothing: float = 0.0, options: Any = None,
    ) -> None:  # fmt: skip
        if weight is not None and tuple(weight.shape) != (num_classes,):
            raise RuntimeError(
                f"weight must hold one value per class, shape {(num_classes,)}, "
                f"got {tuple(weight.shape)}"
            )
        if not 0.0 <= label_smoothing <= 1.0:
            raise RuntimeError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        _WeightedLoss.__init__(self, weight, reduction=reduction)
        self.num_classes = num_classes
        self.out_features = out_features
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.linear = torch.nn.Linear(
            in_features,
            math.prod(out_features, start=num_classes),
            bias=bias,
            device=device,
            dtype=dtype,
        )
        self.options = options

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        shape = (self.num_classes, *self.out_features)
        bias = self.linear.bias
        return F.linear_cross_entropy(
            input,
            self.linear.weight.reshape(*shape, self.linear.in_features),
            target,
            linear_bias=None if bias is None else bias.reshape(shape),
            weight=self.weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            options=self.options,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.linear.in_features}, num_classes={self.num_classes}, "
            f"out_features={self.out_features}, bias={self.linear.bias is not None}, "
            f"reduction={self.reduction}, ignore_index={self.ignore_index}, "
            f"label_smoothing={self.label_smoothing}, options={self.options}"
        )


class AdaptiveLogSoftmaxWithLoss(torch.nn.AdaptiveLogSoftmaxWithLoss):
    """Adaptive softmax (Grave et al. 2017, "Efficient softmax approximation for GPUs").

    Classes are sorted by frequency. The head scores the ``cutoffs[0]`` most frequent
    classes plus one logit per tail cluster; cluster i holds classes
    [cutoffs[i], cutoffs[i+1]) behind a projection to ``in_features // div_value**(i+1)``
    dimensions. log p(c) = log p_head(c) for head classes, else
    log p_head(cluster of c) + log p_cluster(c). ``forward`` returns each row's log p of
    its target and the mean negative log-likelihood.
    """

    def __init__(
        self, in_features: int, n_classes: int, cutoffs: Sequence[int], div_value: float = 4.0,
        head_bias: bool = False, device: Any = None, dtype: Any = None,
    ) -> None:  # fmt: skip
        torch.nn.Module.__init__(self)
        cutoffs = list(cutoffs)
        if not cutoffs:
            raise ValueError("cutoffs must hold at least one value")
        if (
            cutoffs != sorted(cutoffs)
            or min(cutoffs) <= 0
            or max(cutoffs) > n_classes - 1
            or len(set(cutoffs)) != len(cutoffs)
            or any(int(c) != c for c in cutoffs)
        ):
            raise ValueError(
                f"cutoffs must be distinct integers in increasing order, each in "
                f"[1, n_classes - 1] = [1, {n_classes - 1}]; got {cutoffs}"
            )
        self.in_features = in_features
        self.n_classes = n_classes
        self.cutoffs = [*cutoffs, n_classes]
        self.div_value = div_value
        self.head_bias = head_bias
        self.shortlist_size = self.cutoffs[0]
        self.n_clusters = len(self.cutoffs) - 1
        self.head_size = self.shortlist_size + self.n_clusters
        factory = {"device": device, "dtype": dtype}
        self.head = torch.nn.Linear(in_features, self.head_size, bias=head_bias, **factory)
        self.tail = torch.nn.ModuleList()
        for i in range(self.n_clusters):
            hidden = int(in_features // (div_value ** (i + 1)))
            size = self.cutoffs[i + 1] - self.cutoffs[i]
            self.tail.append(
                torch.nn.Sequential(
                    torch.nn.Linear(in_features, hidden, bias=False, **factory),
                    torch.nn.Linear(hidden, size, bias=False, **factory),
                )
            )

    def reset_parameters(self) -> None:
        """Re-draw every parameter as at construction."""
        self.head.reset_parameters()
        for projection in self.tail:
            for layer in projection:  # type: ignore[attr-defined]
                layer.reset_parameters()

    def forward(self, input_: Tensor, target_: Tensor) -> Any:
        if target_.dim() == 1:
            if input_.size(0) != target_.size(0):
                raise RuntimeError(
                    f"input and target differ in batch size: {input_.size(0)} and {target_.size(0)}"
                )
            if input_.dim() != 2:
                raise RuntimeError(
                    f"a 1-D target needs a 2-D (N, in_features) input, got shape "
                    f"{tuple(input_.shape)}"
                )
        elif target_.dim() == 0:
            if input_.dim() != 1:
                raise RuntimeError(
                    f"a 0-D target needs a 1-D (in_features) input, got shape {tuple(input_.shape)}"
                )
        else:
            raise RuntimeError(
                f"target must be 0-D or 1-D (one class per row), got {target_.dim()}-D"
            )
        batched = target_.dim() > 0
        input = input_ if batched else input_.unsqueeze(0)
        target = target_ if batched else target_.unsqueeze(0)
        n = target.size(0)
        output = input.new_zeros(n)
        # the head's column per row: its class, or the logit of its class's cluster
        head_column = target.new_empty(n)
        bounds = [0, *self.cutoffs]
        placed = 0
        for i, (low, high) in enumerate(itertools.pairwise(bounds)):
            mask = (target >= low) & (target < high)
            rows = mask.nonzero().flatten()
            if rows.numel() == 0:
                continue
            if i == 0:
                head_column.index_copy_(0, rows, target[mask])
            else:
                logp = log_softmax(self.tail[i - 1](input.index_select(0, rows)), dim=1)
                picked = logp.gather(1, (target[mask] - low).unsqueeze(1)).squeeze(1)
                output.index_copy_(0, rows, picked)
                head_column.index_fill_(0, rows, self.shortlist_size + i - 1)
            placed += rows.numel()
        if placed != n:
            raise RuntimeError(
                f"targets must be class indices in [0, {self.n_classes - 1}], found values "
                f"from {int(target.min())} to {int(target.max())}"
            )
        head_logp = log_softmax(self.head(input), dim=1)
        # in place: the sum keeps the input's dtype where the layers' differs (autocast)
        output.add_(head_logp.gather(1, head_column.unsqueeze(1)).squeeze(1))
        loss = (-output).mean()
        return _RESULT(output if batched else output.squeeze(0), loss)

    def _get_full_log_prob(self, input: Tensor, head_output: Tensor) -> Tensor:
        """log p of every class, from the input and the head's output on it."""
        head_logp = log_softmax(head_output, dim=1)
        parts = [head_logp[:, : self.shortlist_size]]
        for i in range(self.n_clusters):
            cluster_logp = log_softmax(self.tail[i](input), dim=1)
            parts.append(cluster_logp + head_logp[:, self.shortlist_size + i].unsqueeze(1))
        # in the input's dtype, also where the layers' differs (autocast)
        return torch.cat(parts, dim=1).to(input.dtype)

    def log_prob(self, input: Tensor) -> Tensor:
        """log-probabilities of all ``n_classes`` classes for each row of ``input``."""
        return self._get_full_log_prob(input, self.head(input))

    def predict(self, input: Tensor) -> Tensor:
        """The most probable class of each row (``log_prob(input).argmax(1)``), computing
        the tail clusters only for rows whose best head logit is a cluster."""
        head_output = self.head(input)
        best = torch.argmax(head_output, dim=1)
        in_tail = best >= self.shortlist_size
        if not bool(in_tail.any()):
            return best
        if bool(in_tail.all()):
            return torch.argmax(self._get_full_log_prob(input, head_output), dim=1)
        full = self._get_full_log_prob(input[in_tail], head_output[in_tail])
        best[in_tail] = torch.argmax(full, dim=1)
        return best


def _result_type(torch_class: type) -> Any:
    """The (output, loss) NamedTuple type that torch's ``forward`` declares it returns (an
    annotation read, no torch code run), so results are of torch's type; where it cannot be
    read, our own of the same name and fields."""
    declared = torch_class.forward.__annotations__.get("return")  # type: ignore[attr-defined]
    if isinstance(declared, type) and getattr(declared, "_fields", None) == ("output", "loss"):
        return declared
    return collections.namedtuple("_ASMoutput", ["output", "loss"])


_RESULT = _result_type(AdaptiveLogSoftmaxWithLoss.__bases__[0])
