"""Segmentation models, one family per module, registered by name.

Every non-underscore module here is imported on package import, so a new family
is one new file. Contract: ``model(x)`` returns ``{"out": N×C×H×W}`` at the
input's H×W for any size, plus ``"aux"`` for models with an auxiliary head.
"""

from __future__ import annotations

import importlib
import pkgutil

from semseg.registry import MODELS

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

build = MODELS.build
list_models = MODELS.names

__all__ = ["MODELS", "build", "list_models"]
