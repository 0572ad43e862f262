"""CTCLoss: the module over :func:`reimpl.nn.functional.ctc_loss`.

Subclasses ``torch.nn.CTCLoss`` for identity only (``isinstance`` checks hold); every
method torch's class defines is defined here again. torch's constructor signature, its
attributes (``blank``, ``reduction``, ``zero_infinity``) and its TorchScript constants, so
a scripted model holding it compiles: under ``torch.jit.script`` the forward takes the
scriptable form in :mod:`reimpl.nn.functional._ctc_script` (tensor lengths only, as
torch's scripted module).
"""

import torch
from torch import Tensor

from reimpl.nn import functional as F
from reimpl.nn.functional import _ctc_script as S
from reimpl.nn.modules.loss import _Loss


class CTCLoss(_Loss, torch.nn.CTCLoss):
    """Connectionist temporal classification loss of ``log_probs`` (T, N, C) or (T, C)
    against padded (N, S) or concatenated targets (Graves et al. 2006)."""

    blank: int
    zero_infinity: bool

    def __init__(self, blank: int = 0, reduction: str = "mean", zero_infinity: bool = False):
        _Loss.__init__(self, reduction=reduction)
        self.blank = blank
        self.zero_infinity = zero_infinity

    def forward(
        self, log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor
    ) -> Tensor:
        if torch.jit.is_scripting():
            return S.ctc_loss(
                log_probs,
                targets,
                input_lengths,
                target_lengths,
                self.blank,
                self.reduction,
                self.zero_infinity,
            )
        return F.ctc_loss(
            log_probs,
            targets,
            input_lengths,
            target_lengths,
            blank=self.blank,
            reduction=self.reduction,
            zero_infinity=self.zero_infinity,
        )
