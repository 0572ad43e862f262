"""Parity tables, one module per family. ``ALL`` is what ``reimpl check`` runs."""

from reimpl_parity.cases.instance_norm import INSTANCE_NORM_CASES, INSTANCE_NORM_ERROR_CASES
from reimpl_parity.cases.losses import LOSS_CASES, LOSS_ERROR_CASES
from reimpl_parity.cases.normalization import NORMALIZATION_CASES, NORMALIZATION_ERROR_CASES
from reimpl_parity.cases.optim import OPTIM_CASES
from reimpl_parity.cases.regularizers import REGULARIZER_CASES, REGULARIZER_ERROR_CASES
from reimpl_parity.cases.schedulers import SCHEDULER_CASES, SCHEDULER_ERROR_CASES

ALL = {
    "losses": LOSS_CASES,
    "loss-errors": LOSS_ERROR_CASES,
    "optim": OPTIM_CASES,
    "regularizers": REGULARIZER_CASES,
    "regularizer-errors": REGULARIZER_ERROR_CASES,
    "lr_scheduler": SCHEDULER_CASES,
    "lr_scheduler-errors": SCHEDULER_ERROR_CASES,
    "instance_norm": INSTANCE_NORM_CASES,
    "instance_norm-errors": INSTANCE_NORM_ERROR_CASES,
    "normalization": NORMALIZATION_CASES,
    "normalization-errors": NORMALIZATION_ERROR_CASES,
}

__all__ = [
    "ALL",
    "INSTANCE_NORM_CASES",
    "INSTANCE_NORM_ERROR_CASES",
    "LOSS_CASES",
    "LOSS_ERROR_CASES",
    "NORMALIZATION_CASES",
    "NORMALIZATION_ERROR_CASES",
    "OPTIM_CASES",
    "REGULARIZER_CASES",
    "REGULARIZER_ERROR_CASES",
    "SCHEDULER_CASES",
    "SCHEDULER_ERROR_CASES",
]
