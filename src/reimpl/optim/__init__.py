"""Optimizers, LR schedulers and weight averaging, mirroring ``torch.optim``."""

from reimpl.optim.adagrad import Adagrad
from reimpl.optim.adam import Adam, AdamW
from reimpl.optim.optimizer import Optimizer
from reimpl.optim.rmsprop import RMSprop
from reimpl.optim.sgd import SGD

__all__: list[str] = ["SGD", "Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop"]
