"""Optimizers, LR schedulers and weight averaging, mirroring ``torch.optim``."""

__all__: list[str] = []
