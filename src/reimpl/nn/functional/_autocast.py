"""torch's autocast policy for the ops reimpl reimplements, applied with elementary ops.

Under ``torch.autocast(device_type, dtype)`` torch picks, per op and per device type, what
happens to the op's floating-point tensor arguments on that device type (torch 2.13:
``aten/src/ATen/autocast_mode.cpp`` and ``autocast_mode.h``; checked by experiment on CPU):

* fp32 on both: ``nll_loss``, ``binary_cross_entropy_with_logits``, and the unweighted
  ``mse_loss``, ``l1_loss``, ``smooth_l1_loss``, ``huber_loss``;
* ``cross_entropy``: fp32 on CPU; on CUDA not listed, so torch's composite runs:
  ``log_softmax`` in the input's own dtype, an fp32 ``nll_loss``, and float32 sums for the
  label-smoothing and class-probability terms;
* ``binary_cross_entropy``: fp32 on CPU; refused on CUDA (RuntimeError: "unsafe to
  autocast", use the logits form);
* ``log_softmax``: not listed on CPU; on CUDA a float32 result when no ``dtype`` is given;
* weighted ``mse``/``l1``/``huber`` losses are elementwise ops in torch's Python code:
  none listed on CPU; on CUDA ``pow`` is fp32 and ``sum`` accumulates in float32 (the
  huber term itself is fp32 on both);
* ``batch_norm`` and the dropout family: not listed on either;
* ``linear_cross_entropy``: its linear is lower-precision (``linear``: every eligible
  tensor cast to autocast's dtype) on both, then its cross-entropy as ``cross_entropy``;
* fp32 on both: ``kl_div``, ``poisson_nll_loss``, ``margin_ranking_loss``,
  ``hinge_embedding_loss``, ``soft_margin_loss``, ``multi_margin_loss``,
  ``multilabel_margin_loss``, ``cosine_embedding_loss``, ``triplet_margin_loss``;
* ``ctc_loss``: fp32 on CPU (both overloads: tensor and int-list lengths); not listed on
  CUDA (so 16-bit log-probabilities are refused there, as without autocast);
* ``cosine_similarity``: not listed on CPU, fp32 on CUDA; ``pairwise_distance``: not listed,
  but on CUDA the ``norm`` inside it is fp32;
* ``gaussian_nll_loss``, ``multilabel_soft_margin_loss``, ``triplet_margin_with_distance_loss``
  are torch's Python code, not listed: on CPU they run as they are; on CUDA their ``log`` and
  ``pow`` are fp32 and their ``sum`` accumulates in float32;
* ``instance_norm``: not listed on either (nor the ``batch_norm`` it runs);
  ``local_response_norm`` is torch's Python code: on CPU its ``avg_pool3d`` (inputs of 4
  dims and more) is fp32, its ``avg_pool2d`` (3 dims) not listed; on CUDA its ``pow`` is fp32.
* ``layer_norm``, ``group_norm``: not listed on CPU; fp32 on CUDA. ``rms_norm``: not listed
  on either (on CUDA its composite's ``pow``/``rsqrt`` are fp32 and its result is cast
  back to the input's dtype, so the result is the unlisted one).

*fp32*: every floating-point tensor argument on that device type, other than float64, is
cast to float32 and the op runs with autocast off. *Not listed*: the op runs on its
arguments as they are. ``sum`` (CUDA) sums in float32 (``dtype=torch.float32``) when its
argument is floating point and not float64.

reimpl's functions ask :func:`active` for the device type whose autocast applies to their
input, apply the policy above with the casts below, and run their own arithmetic with that
autocast off (so torch's policy for elementary ops -- ``exp``, ``sum``, ``matmul`` ... --
never reaches inside a reimplemented op). Other device types than CPU and CUDA are left as
they are.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor

_DEVICE_TYPES = ("cpu", "cuda")


def _enabled(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4: no device argument
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled())


def active(input: Tensor) -> str | None:
    """The device type ("cpu" or "cuda") whose autocast applies to ``input``, or None."""
    device_type = input.device.type
    if device_type in _DEVICE_TYPES and _enabled(device_type):
        return device_type
    return None


def off(device_type: str) -> AbstractContextManager[None]:
    """A context in which ``device_type``'s autocast is off (the ops inside run as written)."""
    return torch.autocast(device_type, enabled=False)


def run(input: Tensor, fn: Callable[..., Tensor], *args: Any) -> Tensor:
    """``fn(*args, ac)``: ``ac`` the device type whose autocast applies to ``input`` (None:
    none does), and, when one does, that autocast off while ``fn`` runs (``fn`` applies
    the op's policy itself, then computes as written)."""
    ac = active(input)
    if ac is None:
        return fn(*args, None)
    with off(ac):
        return fn(*args, ac)


def run_fp32(input: Tensor, fn: Callable[..., Tensor], *args: Any, **kwargs: Any) -> Tensor:
    """``fn(*args, **kwargs)`` under the fp32 policy: when an autocast applies to ``input``,
    with that autocast off and each tensor in ``args`` as :func:`fp32` passes it on
    (``kwargs`` go as they are)."""
    ac = active(input)
    if ac is None:
        return fn(*args, **kwargs)
    with off(ac):
        return fn(*(fp32(ac, a) if isinstance(a, Tensor) else a for a in args), **kwargs)


def eligible(t: Tensor, device_type: str) -> bool:
    """Does autocast cast ``t``: floating point, not float64, on ``device_type``."""
    return t.is_floating_point() and t.dtype != torch.float64 and t.device.type == device_type


def fp32(device_type: str, t: Tensor) -> Tensor:
    """``t`` as the fp32 policy passes it on: float32 if eligible, else unchanged."""
    if eligible(t, device_type) and t.dtype != torch.float32:
        return t.to(torch.float32)
    return t


def lower(device_type: str, t: Tensor) -> Tensor:
    """``t`` as the lower-precision policy passes it on: in autocast's dtype if eligible."""
    dtype = torch.get_autocast_dtype(device_type)
    return t.to(dtype) if eligible(t, device_type) and t.dtype != dtype else t


def fp32_opt(device_type: str, t: Tensor | None) -> Tensor | None:
    return None if t is None else fp32(device_type, t)


def sum_dtype(device_type: str | None, t: Tensor) -> torch.dtype | None:
    """The ``dtype=`` CUDA autocast gives ``sum`` of ``t`` (float32 if eligible), else None."""
    if device_type == "cuda" and eligible(t, device_type):
        return torch.float32
    return None
