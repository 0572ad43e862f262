"""Parity table for the optimizers: whole training trajectories, compared after every step.

One module of rows per optimizer family (``classic``: the five reimpl started with; one
module per optimizer after that), each row one optimizer flavour that needs its own
strategy, tolerance (with its ``why``) or device. The machinery they share -- the row,
the drawn problem, the trajectory both sides run -- is in ``_machinery``. Adding an
optimizer = one file in ``reimpl/optim`` + its rows in a module here, listed below.
"""

from reimpl_parity.cases.optim import (
    adadelta,
    adafactor,
    adamax,
    asgd,
    classic,
    lbfgs,
    muon,
    nadam,
    radam,
    rprop,
    sparse_adam,
)
from reimpl_parity.cases.optim._machinery import (
    _FUSED_TOL,
    _FUSED_WHY,
    ALL_DTYPES,
    REAL_DTYPES,
    KwargsFor,
    OptimRow,
    Problem,
    _always_fused,
    _decays,
    _groups,
    _lrs,
    _paths,
    _with,
    run_trajectory,
)
from reimpl_parity.harness import Case

ROWS: list[OptimRow] = [
    *classic.ROWS,
    *nadam.ROWS,
    *radam.ROWS,
    *adamax.ROWS,
    *adadelta.ROWS,
    *rprop.ROWS,
    *asgd.ROWS,
    *sparse_adam.ROWS,
    *adafactor.ROWS,
    *muon.ROWS,
    *lbfgs.ROWS,
]
OPTIM_CASES: list[Case] = [r.case() for r in ROWS]

__all__ = [
    "ALL_DTYPES",
    "OPTIM_CASES",
    "REAL_DTYPES",
    "ROWS",
    "_FUSED_TOL",
    "_FUSED_WHY",
    "KwargsFor",
    "OptimRow",
    "Problem",
    "_always_fused",
    "_decays",
    "_groups",
    "_lrs",
    "_paths",
    "_with",
    "run_trajectory",
]
