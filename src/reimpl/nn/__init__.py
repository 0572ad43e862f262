"""Modules mirroring ``torch.nn`` for what reimpl covers."""

from reimpl.nn import functional
from reimpl.nn.modules import *  # noqa: F403
from reimpl.nn.modules import __all__ as _modules_all

__all__ = ["functional", *_modules_all]
