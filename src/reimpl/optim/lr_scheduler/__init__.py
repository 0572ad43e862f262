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

from reimpl.optim.lr_scheduler._base import LRScheduler, _LRScheduler, _per_group
from reimpl.optim.lr_scheduler._composite import ChainedScheduler, SequentialLR
from reimpl.optim.lr_scheduler._cyclic import CyclicLR, OneCycleLR
from reimpl.optim.lr_scheduler._plateau import ReduceLROnPlateau
from reimpl.optim.lr_scheduler._simple import (
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    MultiplicativeLR,
    MultiStepLR,
    PolynomialLR,
    StepLR,
)

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
