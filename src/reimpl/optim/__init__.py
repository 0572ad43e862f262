"""Optimizers, LR schedulers and weight averaging, mirroring ``torch.optim``."""

__all__: list[str] = []

from reimpl.optim import lr_scheduler, swa_utils
from reimpl.optim.ewa import exponential_weighted_average

__all__ += ["exponential_weighted_average", "lr_scheduler", "swa_utils"]
