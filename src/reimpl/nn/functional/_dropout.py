"""The dropout family, drawing random numbers exactly as torch's CPU kernels do.

How torch (2.13, CPU) draws, found by experiment and checked bit for bit (output and the
generator state afterwards), for every variant here:

* nothing is drawn when ``training`` is false, ``p == 0`` or the input is empty: the
  input itself is returned (the very same tensor object);
* ``p == 1`` draws nothing either: the result is ``input * zeros(())`` (so ``nan``/``inf``
  become ``nan`` and signs of zero follow the input);
* otherwise one ``bernoulli_(1 - p)`` fills a fresh *keep* tensor of the input's dtype:
  ``empty_like(input)`` for element-wise dropout (same strides as the input), or a
  contiguous ``(N, C, 1, 1, ...)`` tensor for the channel-wise ("feature") variants;
* plain dropout then scales the keep tensor in place, ``keep /= 1 - p`` (in the input's
  dtype), and returns ``input * keep``;
* alpha dropout (SELU's): with ``alpha' = -1.7580993408473766`` (``-λα`` of SELU) and
  ``a = ((α'² p + 1)(1 - p))^(-1/2)``, ``b = (keep - 1)·(|α'|·a) + |α'|·a·p`` and then
  ``keep *= a``; the result is ``input * keep + b``.

The gradient is autograd's of that last product: ``grad * keep`` (mask × scale).
On CUDA torch uses a fused kernel with its own random stream; reimpl keeps the recipe
above there too (same distribution and scaling, different random numbers).
"""

from __future__ import annotations

import warnings

from torch import Tensor

from reimpl.nn.functional import _scripted


def _check_p(p: float) -> None:
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def _masked(
    input: Tensor, p: float, training: bool, inplace: bool, *, per_channel: bool, alpha: bool
) -> Tensor:
    """The recipe above, written once in :mod:`._scripted` (the modules' TorchScript form
    uses it too)."""
    return _scripted.masked_dropout(input, p, training, inplace, per_channel, alpha)


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero each element with probability ``p``; scale survivors by ``1 / (1 - p)``."""
    _check_p(p)
    return _masked(input, p, training, inplace, per_channel=False, alpha=False)


def alpha_dropout(
    input: Tensor, p: float = 0.5, training: bool = False, inplace: bool = False
) -> Tensor:
    """Dropout for SELU networks: dropped elements go to SELU's saturation value and an
    affine correction keeps zero mean and unit variance."""
    _check_p(p)
    return _masked(input, p, training, inplace, per_channel=False, alpha=True)


def feature_alpha_dropout(
    input: Tensor, p: float = 0.5, training: bool = False, inplace: bool = False
) -> Tensor:
    """Alpha dropout of whole channels of an ``(N, C, ...)`` input."""
    _check_p(p)
    return _masked(input, p, training, inplace, per_channel=True, alpha=True)


def _unbatched(input: Tensor, inplace: bool) -> Tensor:
    return input.unsqueeze_(0) if inplace else input.unsqueeze(0)


def _rebatched(result: Tensor, inplace: bool) -> Tensor:
    return result.squeeze_(0) if inplace else result.squeeze(0)


def dropout1d(
    input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
) -> Tensor:
    """Zero whole channels of an ``(N, C, L)`` or unbatched ``(C, L)`` input."""
    _check_p(p)
    if input.dim() not in (2, 3):
        raise RuntimeError(
            f"dropout1d: needs a 2-D (C, L) or 3-D (N, C, L) input, but got a {input.dim()}-D "
            "input (it drops whole channels of inputs with one spatial dimension)"
        )
    batched = input.dim() == 3
    x = input if batched else _unbatched(input, inplace)
    out = _masked(x, p, training, inplace, per_channel=True, alpha=False)
    return out if batched else _rebatched(out, inplace)


def _warn_rank(ndim: int, *, spatial: int) -> None:
    """dropout2d's / dropout3d's deprecation warning (to their caller) for an input of
    another rank than ``spatial + 1`` or ``spatial + 2``."""
    if ndim in (spatial + 1, spatial + 2):
        return
    name = f"dropout{spatial}d"
    warnings.warn(
        f"{name}: a {ndim}-D input is deprecated and will be an error in a future "
        f"release; {name} drops whole channels of {spatial + 1}-D or {spatial + 2}-D inputs "
        f"(channel dim plus {spatial} spatial dims, with an optional batch dim). "
        "Use dropout for others.",
        UserWarning,
        stacklevel=3,
    )


def dropout2d(
    input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
) -> Tensor:
    """Zero whole channels of an ``(N, C, H, W)`` input.

    As in torch 2.13: other ranks than 3 or 4 warn (deprecated) and are dropped
    channel-wise over dims 0 and 1 as they are; a 3-D input warns and is read as
    ``(N, C, L)`` (batched 1-D), not as an unbatched ``(C, H, W)``.
    """
    _check_p(p)
    ndim = input.dim()
    _warn_rank(ndim, spatial=2)
    if ndim == 3:
        warnings.warn(
            "dropout2d: a 3-D input is taken as (N, C, L) and gets channel-wise 1-D "
            "dropout (as torch does today; torch plans to read it as unbatched (C, H, W)). "
            "Use dropout1d for (N, C, L) inputs.",
            UserWarning,
            stacklevel=2,
        )
    return _masked(input, p, training, inplace, per_channel=True, alpha=False)


def dropout3d(
    input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
) -> Tensor:
    """Zero whole channels of an ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)`` input.

    Other ranks warn (deprecated), and anything but 5-D is treated as unbatched.
    """
    _check_p(p)
    ndim = input.dim()
    _warn_rank(ndim, spatial=3)
    batched = ndim == 5
    x = input if batched else _unbatched(input, inplace)
    out = _masked(x, p, training, inplace, per_channel=True, alpha=False)
    return out if batched else _rebatched(out, inplace)
