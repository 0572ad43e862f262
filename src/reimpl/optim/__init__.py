"""Optimizers, LR schedulers and weight averaging, mirroring ``torch.optim``."""

from reimpl.optim import lr_scheduler, swa_utils
from reimpl.optim.adadelta import Adadelta
from reimpl.optim.adafactor import Adafactor
from reimpl.optim.adagrad import Adagrad
from reimpl.optim.adam import Adam, AdamW
from reimpl.optim.adamax import Adamax
from reimpl.optim.asgd import ASGD
from reimpl.optim.ewa import exponential_weighted_average
from reimpl.optim.lbfgs import LBFGS
from reimpl.optim.muon import Muon
from reimpl.optim.nadam import NAdam
from reimpl.optim.optimizer import Optimizer
from reimpl.optim.radam import RAdam
from reimpl.optim.rmsprop import RMSprop
from reimpl.optim.rprop import Rprop
from reimpl.optim.sgd import SGD
from reimpl.optim.sparse_adam import SparseAdam

__all__ = [
    "ASGD",
    "LBFGS",
    "SGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Muon",
    "NAdam",
    "Optimizer",
    "RAdam",
    "RMSprop",
    "Rprop",
    "SparseAdam",
    "exponential_weighted_average",
    "lr_scheduler",
    "swa_utils",
]
