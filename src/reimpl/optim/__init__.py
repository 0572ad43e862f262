"""Optimizers, LR schedulers and weight averaging, mirroring ``torch.optim``."""

from reimpl.optim import lr_scheduler, swa_utils
from reimpl.optim.adagrad import Adagrad
from reimpl.optim.adam import Adam, AdamW
from reimpl.optim.ewa import exponential_weighted_average
from reimpl.optim.optimizer import Optimizer
from reimpl.optim.rmsprop import RMSprop
from reimpl.optim.sgd import SGD

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "Optimizer",
    "RMSprop",
    "exponential_weighted_average",
    "lr_scheduler",
    "swa_utils",
]
