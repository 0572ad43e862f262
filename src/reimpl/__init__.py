"""reimpl: PyTorch's training building blocks, reimplemented from scratch.

Drop-in: ``import reimpl.nn as nn``, ``import reimpl.optim as optim``.
"""

from reimpl import nn, optim

__version__ = "0.1.0"
__all__ = ["__version__", "nn", "optim"]
