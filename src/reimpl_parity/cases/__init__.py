"""Parity tables, one module per family. ``ALL`` is what ``reimpl check`` runs."""

from reimpl_parity.cases.losses import LOSS_CASES, LOSS_ERROR_CASES
from reimpl_parity.cases.optim import OPTIM_CASES

ALL = {"losses": LOSS_CASES, "loss-errors": LOSS_ERROR_CASES, "optim": OPTIM_CASES}

__all__ = ["ALL", "LOSS_CASES", "LOSS_ERROR_CASES", "OPTIM_CASES"]
